-- wrk script for bench/proxy.sh: prints one machine-readable line at the end of a run with
-- the throughput and the latency percentiles (microseconds) from wrk's own histogram, p99.9
-- included (wrk's --latency text stops at p99). Requests are wrk's default GET with the
-- headers given on the command line (-H 'Host: …').
done = function(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d rps=%.1f p50=%d p90=%d p99=%d p999=%d max=%d "
            .. "connect_err=%d read_err=%d write_err=%d status_err=%d timeout_err=%d\n",
        summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
        latency:percentile(50), latency:percentile(90), latency:percentile(99),
        latency:percentile(99.9), latency.max,
        e.connect, e.read, e.write, e.status, e.timeout))
end
