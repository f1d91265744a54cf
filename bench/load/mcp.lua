-- wrk script for the MCP load benchmark (bench/run.py drives it; usable by hand).
--
--   wrk -t T -c C -d 10s -s bench/load/mcp.lua URL -- BODY_FILE LIMIT SECONDS 'Name: value'...
--
-- BODY_FILE holds one JSON-RPC body; every "@@ID@@" in it becomes a request id unique
-- across threads, so concurrent requests in one MCP session never share an id. LIMIT
-- bounds the responses per thread and SECONDS (fractions allowed, unlike -d) the time:
-- the first thread to reach either stops the whole run (SIGINT to wrk, which ends within
-- its 100 ms tick). 0 means no bound; -d stays the hard bound (a target that never
-- answers never reaches response()).
--
-- Every response is checked: status 200, a body holding a JSON-RPC "result" and no
-- "error" member. done() prints one line, "WRKJSON {...}", with the counts and the
-- latency percentiles in microseconds.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

local ok_ffi, ffi = pcall(require, "ffi")
if ok_ffi then
   ffi.cdef([[
      struct bench_timespec { long tv_sec; long tv_nsec; };
      int clock_gettime(int clock, struct bench_timespec *ts);
      int kill(int pid, int sig);
      int getpid(void);
   ]])
end

local function now()
   if not ok_ffi then return os.time() end
   local ts = ffi.new("struct bench_timespec")
   ffi.C.clock_gettime(1, ts)  -- CLOCK_MONOTONIC
   return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local function signal_wrk()
   -- LuaJIT's FFI reaches kill(2) directly; without it, a shell does it a moment later
   -- (system() ignores SIGINT in the caller while its child runs).
   if ok_ffi then
      ffi.C.kill(ffi.C.getpid(), 2)
   else
      os.execute("(sleep 0.05; kill -INT $PPID) >/dev/null 2>&1 &")
   end
end

function init(args)
   local f = assert(io.open(args[1], "rb"))
   local body = f:read("*a")
   f:close()
   parts = {}
   local from = 1
   while true do
      local at = body:find("@@ID@@", from, true)
      if not at then break end
      table.insert(parts, body:sub(from, at - 1))
      from = at + 6
   end
   table.insert(parts, body:sub(from))
   limit = tonumber(args[2]) or 0
   seconds = tonumber(args[3]) or 0
   wrk.method = "POST"
   for i = 4, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      wrk.headers[name] = value
   end
   next_id = (tid or 0) * 1000000000
   responses, non200, bad, signalled = 0, 0, 0, false
   deadline = nil
end

function request()
   if deadline == nil then
      deadline = seconds > 0 and now() + seconds or math.huge
   end
   next_id = next_id + 1
   local body = parts[1]
   if #parts > 1 then
      local id = tostring(next_id)
      body = table.concat(parts, id)
   end
   return wrk.format(nil, nil, nil, body)
end

function response(status, headers, body)
   responses = responses + 1
   if status ~= 200 then
      non200 = non200 + 1
   elseif not body:find('"result"', 1, true) or body:find('"error":', 1, true) then
      bad = bad + 1
   end
   if not signalled and ((limit > 0 and responses >= limit)
                         or now() >= deadline) then
      signalled = true
      signal_wrk()
   elseif limit > 0 and responses >= 2 * limit then
      wrk.thread:stop()  -- the signal went astray: stop at least this thread
   end
end

function done(summary, latency, requests)
   local got, n200, nbad = 0, 0, 0
   for _, t in ipairs(threads) do
      got = got + (t:get("responses") or 0)
      n200 = n200 + (t:get("non200") or 0)
      nbad = nbad + (t:get("bad") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"mean_us":%.1f,"max_us":%d,"responses":%d,"non200":%d,"bad":%d}\n',
      summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
      e.status, e.timeout, latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.mean, latency.max, got, n200, nbad))
end
