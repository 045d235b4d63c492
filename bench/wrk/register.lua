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
local counter = 0

-- Everything that does not change between requests is built once in init(): with string.format
-- and wrk.format per request, this script itself capped a run at about 50k requests a second,
-- below what the server takes. A request is now a handful of concatenations.
local head = ""
local service_parts = {}
local metadata_parts = {}
local host_prefix = ""

function init(args)
   service_count = tonumber(args[1]) or service_count
   prefix = args[2] or prefix
   ttl = tonumber(args[3]) or ttl
   first_octet = tonumber(args[4]) or first_octet

   -- The request line, Host and Content-Type, without the blank line that ends the head.
   local formatted = wrk.format("POST", "/register", {["Content-Type"] = "application/json"}, nil)
   head = formatted:sub(1, #formatted - 2)
   for i = 0, service_count - 1 do
      service_parts[i] = string.format('{"serviceName":"%s%03d","host":"', prefix, i)
   end
   for i = 0, 11 do
      metadata_parts[i] = string.format(
         ',"ttl":%d,"metadata":{"version":"1.%d.0","tags":["bench","zone-%d"]}}', ttl, i % 4, i % 3
      )
   end
   host_prefix = "127." .. (first_octet + thread_index) .. "."
end

function request()
   local n = counter
   counter = counter + 1
   local body = service_parts[n % service_count]
      .. host_prefix .. (math.floor(n / 256) % 256) .. "." .. (n % 256)
      .. '","port":' .. (8000 + math.floor(n / 65536))
      .. metadata_parts[n % 12]
   return head .. "Content-Length: " .. #body .. "\r\n\r\n" .. body
end

done = report.done
