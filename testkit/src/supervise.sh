# Runs one server for a test process and stops it when that process goes away.
#
# Usage: sh DIR/supervise.sh DIR COMMAND [ARG...]
#
# The test process holds the write end of our stdin pipe and never writes to it. When it
# exits, however it exits (normally, panic, SIGKILL from a test runner's timeout), the
# kernel closes that pipe and the watcher below reads end-of-file and stops the server.
# This is why no signal handler or `Drop` in the test process is needed: a child kept in a
# `static` is never dropped, so `kill_on_drop` alone would leak the server.
#
# DIR holds the server's log (and its data, for PostgreSQL). It is removed after a stop we
# asked for; when the server dies on its own the log stays there for the error message.
set -u
dir=$1
shift
exec 3<&0 0</dev/null >>"$dir/server.log" 2>&1

"$@" 3<&- &
server=$!

stop() {
    : >"$dir/stopping"
    kill -INT "$server" 2>/dev/null
    # A server still there 15 s after the polite signal is killed. This loop ends as soon
    # as the server is gone, so it leaves no stray process behind.
    (
        i=0
        while [ "$i" -lt 150 ] && kill -0 "$server" 2>/dev/null; do
            sleep 0.1
            i=$((i + 1))
        done
        [ "$i" -lt 150 ] || kill -KILL "$server" 2>/dev/null
    ) 3<&- &
}
trap stop INT TERM HUP

# The watcher: blocks until the test process closes our stdin.
(read -r _ <&3 || :; stop) &
watcher=$!
exec 3<&-

code=0
wait "$server" || code=$?
# `wait` also returns when a trapped signal arrives; go on until the server is gone.
while kill -0 "$server" 2>/dev/null; do
    code=0
    wait "$server" || code=$?
done

if [ -e "$dir/stopping" ]; then
    rm -rf "$dir"
    exit 0
fi
kill "$watcher" 2>/dev/null
echo "supervise: server exited by itself with status $code"
exit "$code"
