-- GET /discover, rotating over every pre-registered service so no single cache line stays hot.
--
-- Arguments after "--": service count, service name prefix. Service i is named
-- prefix .. string.format("%04d", i), as bench/run.py registers them. Requests are formatted once
-- in init(), so request() costs wrk a table lookup and the load generator stays cheap.

local report = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "report.lua")

local requests = {}
local counter = 0

function init(args)
   local service_count = tonumber(args[1]) or 1000
   local prefix = args[2] or "bench-svc-"
   for i = 0, service_count - 1 do
      local path = string.format("/discover?serviceName=%s%04d", prefix, i)
      requests[#requests + 1] = wrk.format("GET", path)
   end
end

function request()
   counter = counter % #requests + 1
   return requests[counter]
end

done = report.done
