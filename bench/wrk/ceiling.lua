-- The ceiling run: wrk's static request (GET of the URL given), with the JSON report at the end.

local report = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "report.lua")

done = report.done
