-- wrk script for scripts/bench.sh: GET requests whose paths come from a file, one per line.
--
--   wrk ... -s paths.lua URL -- FILE MODE THREADS   (THREADS = wrk -t, for walk)
--
-- MODE "cycle": every thread loads the whole file and cycles through it (hot runs: the same
--   set of already-cached certificates over and over), each thread from a different offset.
-- MODE "walk": thread i of N takes lines i, i+N, i+2N... and never repeats one (cold runs:
--   every request a new serial). A thread that runs out stops and the run is marked
--   exhausted (the caller sizes the file from the expected rate and fails if this happens).
--
-- done() prints one machine-readable line:
--   BENCH requests=R duration_us=D rps=X bytes=B connect=C read=R write=W status=S timeout=T
--         non2xx=S exhausted=E lat_p50_us=.. lat_p99_us=.. lat_mean_us=..

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_id", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

function init(args)
   local file, mode = args[1], args[2] or "cycle"
   local nthreads = tonumber(args[3] or "1")
   walk = (mode == "walk")
   paths = {}
   local i = 0
   for line in io.lines(file) do
      if line ~= "" then
         if (not walk) or (i % nthreads == thread_id) then
            paths[#paths + 1] = line
         end
         i = i + 1
      end
   end
   n = #paths
   if n == 0 then
      error("paths.lua: no paths for thread " .. tostring(thread_id) .. " in " .. file)
   end
   -- cycling threads start at different offsets so they do not move in lockstep
   idx = walk and 0 or (thread_id * 7919) % n
   exhausted = 0
end

function request()
   idx = idx + 1
   if idx > n then
      if walk then
         exhausted = 1
         wrk.thread:stop()
      end
      idx = 1
   end
   return wrk.format(nil, paths[idx])
end

function done(summary, latency, requests)
   local ex = 0
   for _, t in ipairs(threads) do
      ex = ex + (t:get("exhausted") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      "BENCH requests=%d duration_us=%d rps=%.1f bytes=%d connect=%d read=%d write=%d status=%d timeout=%d exhausted=%d lat_p50_us=%d lat_p99_us=%d lat_mean_us=%.0f\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6), summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout, ex,
      latency:percentile(50), latency:percentile(99), latency.mean))
end
