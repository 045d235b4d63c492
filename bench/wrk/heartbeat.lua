-- POST /heartbeat for every pre-registered instance in turn, each with a JSON body {"nodeId": ...}.
--
-- Arguments after "--": service count, instances per service, service name prefix, host, first
-- port. Instance j of service i listens on first_port + i * per_service + j, as bench/run.py
-- registers them, so every heartbeat names a node that exists.

local report = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "report.lua")

local requests = {}
local counter = 0

function init(args)
   local service_count = tonumber(args[1]) or 1000
   local per_service = tonumber(args[2]) or 3
   local prefix = args[3] or "bench-svc-"
   local host = args[4] or "127.0.0.1"
   local first_port = tonumber(args[5]) or 20000
   for i = 0, service_count - 1 do
      for j = 0, per_service - 1 do
         local node_id = string.format("%s%04d:%s:%d", prefix, i, host, first_port + i * per_service + j)
         local body = string.format('{"nodeId":"%s"}', node_id)
         requests[#requests + 1] = wrk.format("POST", "/heartbeat", {["Content-Type"] = "application/json"}, body)
      end
   end
end

function request()
   counter = counter % #requests + 1
   return requests[counter]
end

done = report.done
