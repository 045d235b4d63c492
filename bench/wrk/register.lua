-- POST /register of instances the registry has never seen: each request names a new host.
--
-- Arguments after "--": service count, service name prefix, ttl (seconds), first octet. Request n
-- of wrk thread t registers host 127.<octet + t>.<n / 256 % 256>.<n % 256> on port
-- 8000 + n / 65536, so no two requests of one run collide (up to 57,535 * 65,536 per thread), and
-- runs given octets far enough apart never collide either. The instances spread over the given
-- number of services. Every address is on loopback: nothing ever dials them.

local report = dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "report.lua")

-- setup() runs in wrk's main Lua state, once per thread, before that thread's init().
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local service_count = 100
local prefix = "bench-reg-"
local ttl = 3600
local first_octet = 100
local headers = {["Content-Type"] = "application/json"}
local counter = 0

function init(args)
   service_count = tonumber(args[1]) or service_count
   prefix = args[2] or prefix
   ttl = tonumber(args[3]) or ttl
   first_octet = tonumber(args[4]) or first_octet
end

function request()
   local n = counter
   counter = counter + 1
   local host = string.format("127.%d.%d.%d", first_octet + thread_index, math.floor(n / 256) % 256, n % 256)
   local port = 8000 + math.floor(n / 65536)
   local body = string.format(
      '{"serviceName":"%s%03d","host":"%s","port":%d,"ttl":%d,'
         .. '"metadata":{"version":"1.%d.0","tags":["bench","zone-%d"]}}',
      prefix, n % service_count, host, port, ttl, n % 4, n % 3
   )
   return wrk.format("POST", "/register", headers, body)
end

done = report.done
