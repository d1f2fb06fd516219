// Counter example client: increments through an idempotent POST and keeps a live socket at
// /_vango/live, resuming its session across reconnects.
(function () {
  const count = document.getElementById("count");
  const live = document.getElementById("live");
  let session = sessionStorage.getItem("vango_session") || "";

  document.getElementById("increment").addEventListener("click", async () => {
    const res = await fetch("/actions/increment", {
      method: "POST",
      headers: { "Idempotency-Key": crypto.randomUUID() },
    });
    if (res.ok) count.textContent = (await res.json()).counter;
  });

  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const query = "path=" + encodeURIComponent(location.pathname) +
      (session ? "&session=" + encodeURIComponent(session) : "");
    const ws = new WebSocket(proto + "//" + location.host + "/_vango/live?" + query);
    ws.onmessage = (event) => {
      const msg = JSON.parse(event.data);
      if (msg.type === "hello") {
        session = msg.session;
        sessionStorage.setItem("vango_session", session);
        live.textContent = "live: session " + session + (msg.resumed ? " (resumed)" : "");
        ws.send("ping from the page");
      }
    };
    ws.onclose = () => {
      live.textContent = "live: reconnecting…";
      setTimeout(connect, 1000);
    };
  }
  connect();
})();
