// voiceai live viewer: calls and transcripts from /ws/live, operator actions through /api/calls.
// Everything that comes from a call (names, numbers, transcripts, replies) is caller-controlled:
// it only ever reaches the page through textContent or attribute values, never as HTML.
"use strict";

(() => {
  const TOKEN_KEY = "voiceai.token";
  const KEEP_ENDED_MS = 5 * 60 * 1000; // ended calls stay on screen, greyed, this long
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 15000;
  const STABLE_MS = 5000; // a connection that lived this long resets the backoff
  const ARM_MS = 4000; // how long "Confirm hang up" waits for the second tap
  const TOOL_TEXT_MAX = 160; // a tool's arguments and result beyond this show in the tooltip only
  const STAGES = [
    ["end_of_turn", "end of turn"],
    ["transcript", "transcript ready"],
    ["llm_first_token", "LLM first token"],
    ["first_sentence", "first sentence"],
    ["first_audio", "first audio"],
    ["play_sent", "playback sent"],
    ["playback_started", "playback started"],
  ];
  const STATE_LABELS = {
    dialing: "dialing",
    listening: "listening",
    thinking: "thinking",
    speaking: "speaking",
    transferred: "transferred",
    ended: "ended",
  };

  const $ = (selector) => document.querySelector(selector);
  const callsEl = $("#calls");
  const emptyEl = $("#empty");
  const countEl = $("#count");
  const connEl = $("#conn");
  const eslEl = $("#esl");
  const tokenForm = $("#token-form");
  const tokenInput = $("#token");
  const tokenToggle = $("#token-toggle");
  const template = $("#call-template");

  const calls = new Map();
  let token = "";
  let socket = null;
  let attempt = 0;
  let retryTimer = 0;
  let skewS = null; // local clock minus the service's clock, in seconds
  let waitingForToken = false;

  // -- small helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  function str(value) {
    return typeof value === "string" ? value : value == null ? "" : String(value);
  }

  function num(value) {
    return typeof value === "number" && Number.isFinite(value) ? value : null;
  }

  // The service's clock now, in unix seconds (durations must not depend on this laptop's clock).
  function serverNow() {
    return Date.now() / 1000 - (skewS ?? 0);
  }

  function noteServerTime(at) {
    const local = Date.now() / 1000;
    if (num(at) === null) return;
    // Events arrive late, never early: the smallest difference is the best estimate.
    skewS = skewS === null ? local - at : Math.min(skewS, local - at);
  }

  function parseTime(value) {
    if (num(value) !== null) return value;
    if (typeof value !== "string" || !value) return null;
    // Records store UTC; SQLite drops the offset, so a bare timestamp is UTC too.
    const iso = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : value + "Z";
    const ms = Date.parse(iso);
    return Number.isNaN(ms) ? null : ms / 1000;
  }

  function fmtDuration(seconds) {
    const s = Math.max(0, Math.floor(seconds));
    const h = Math.floor(s / 3600);
    const m = Math.floor((s % 3600) / 60);
    const ss = String(s % 60).padStart(2, "0");
    return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
  }

  function fmtMs(ms) {
    if (num(ms) === null) return "–";
    return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
  }

  function clockTime(at) {
    if (num(at) === null) return "";
    const local = (at + (skewS ?? 0)) * 1000;
    return new Date(local).toLocaleTimeString();
  }

  // -- token ----------------------------------------------------------------------------------

  function loadToken() {
    // A link like https://host/#token=... sets the token (a fragment never leaves the browser);
    // ?token= works too. Either is saved, then taken out of the address bar and history.
    const query = new URLSearchParams(location.search);
    const given = new URLSearchParams(location.hash.slice(1)).get("token") || query.get("token");
    if (given) {
      saveToken(given);
      query.delete("token");
      const rest = query.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : ""));
      return given;
    }
    try {
      return localStorage.getItem(TOKEN_KEY) || "";
    } catch {
      return ""; // storage may be disabled (private mode): the field still works for this tab
    }
  }

  function saveToken(value) {
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Not persisted, but used for this page's life.
    }
  }

  // The token field stays folded away unless the service asks for one or the operator opens it.
  function showTokenForm(show) {
    tokenForm.hidden = !show;
    tokenToggle.setAttribute("aria-expanded", String(show));
    tokenToggle.textContent = token ? "API token ✓" : "API token";
  }

  tokenToggle.addEventListener("click", () => {
    showTokenForm(tokenForm.hidden);
    if (!tokenForm.hidden) tokenInput.focus();
  });

  tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    token = tokenInput.value.trim();
    saveToken(token);
    tokenForm.classList.remove("needed");
    showTokenForm(false);
    waitingForToken = false;
    attempt = 0;
    connect();
  });

  // -- REST -----------------------------------------------------------------------------------

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined || method !== "GET") {
      // JSON even without a body: the service refuses other changes as cross-site forms.
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body ?? {});
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      return { ok: false, status: 0, data: null, detail: "the service cannot be reached" };
    }
    let data = null;
    try {
      data = await response.json();
    } catch {
      // Empty or not JSON (a 202 may have no body).
    }
    if (response.status === 401) needToken();
    return { ok: response.ok, status: response.status, data, detail: errorDetail(response, data) };
  }

  function errorDetail(response, data) {
    if (response.ok) return "";
    const detail = data && data.detail;
    if (typeof detail === "string" && detail) return detail;
    if (Array.isArray(detail)) {
      // FastAPI's 422: a list of {loc, msg}.
      const message = (d) => (d && typeof d.msg === "string" ? d.msg : str(d));
      return detail.map((d) => message(d).replace(/^Value error, /, "")).join("; ");
    }
    return `HTTP ${response.status}`;
  }

  function callPath(id, action) {
    return `api/calls/${encodeURIComponent(id)}/${action}`;
  }

  // FreeSWITCH's state at connect time (503 still has the JSON body); esl.state events follow.
  async function refreshReady() {
    const result = await api("GET", "readyz");
    if (result.data && typeof result.data.esl === "string") setEsl(result.data.esl);
  }

  async function loadRecentEnded() {
    // Calls that ended shortly before this page (re)connected, so a reload loses nothing recent.
    const result = await api("GET", "api/calls?status=ended&limit=20");
    if (!result.ok || !result.data || !Array.isArray(result.data.calls)) return;
    for (const record of result.data.calls) {
      if (!record || typeof record.id !== "string") continue;
      const endedAt = parseTime(record.ended_at);
      if (endedAt === null || serverNow() - endedAt > KEEP_ENDED_MS / 1000) continue;
      let call = calls.get(record.id);
      if (call && call.ended && !call.missedEnd) continue; // seen ending live: already complete
      const unseen = !call;
      if (!call) call = createCall(record.id, parseTime(record.started_at) ?? endedAt);
      applyInfo(call, record);
      // Lists come without turns: a call this page never saw needs its full record.
      const full = unseen ? await api("GET", `api/calls/${encodeURIComponent(record.id)}`) : null;
      const whole = full && full.ok && full.data ? full.data : record;
      if (Array.isArray(whole.turns)) setTurns(call, whole.turns, whole);
      endCall(call, endedAt);
      call.endedAt = endedAt; // the record knows better than the snapshot that missed the end
      call.missedEnd = false;
      renderDuration(call);
      setEndReason(call, record.hangup_cause || record.end_reason);
    }
  }

  // -- connection -----------------------------------------------------------------------------

  function setConn(state, text) {
    connEl.dataset.state = state;
    connEl.textContent = text;
    document.body.dataset.conn = state; // what is shown may be stale while not live
  }

  function setEsl(state) {
    const s = str(state) || "unknown";
    eslEl.dataset.state = s;
    eslEl.textContent = `FreeSWITCH ${s}`;
  }

  function needToken() {
    waitingForToken = true;
    setConn("auth", token ? "wrong token" : "token needed");
    tokenForm.classList.add("needed");
    showTokenForm(true);
  }

  function liveUrl() {
    const url = new URL("ws/live", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    url.search = "";
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  function connect() {
    clearTimeout(retryTimer);
    if (socket) {
      const old = socket;
      socket = null;
      old.close();
    }
    setConn("connecting", attempt ? "reconnecting…" : "connecting…");
    let ws;
    try {
      ws = new WebSocket(liveUrl());
    } catch {
      scheduleRetry();
      return;
    }
    socket = ws;
    let openedAt = 0;
    ws.addEventListener("open", () => {
      if (socket !== ws) return;
      openedAt = Date.now();
      skewS = null;
      setConn("live", "live");
      refreshReady();
    });
    ws.addEventListener("message", (message) => {
      if (socket !== ws) return;
      let event;
      try {
        event = JSON.parse(message.data);
      } catch {
        return;
      }
      handle(event);
    });
    ws.addEventListener("close", () => {
      if (socket !== ws) return; // replaced on purpose
      socket = null;
      if (openedAt && Date.now() - openedAt > STABLE_MS) attempt = 0;
      if (openedAt) {
        scheduleRetry();
        return;
      }
      // Refused before opening: a browser cannot see why, so ask the REST API about the token.
      api("GET", "api/calls?status=active&limit=1").then((result) => {
        if (result.status !== 401) scheduleRetry();
      });
    });
  }

  function scheduleRetry() {
    if (waitingForToken) return;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
    const delay = Math.round(base * (0.75 + Math.random() * 0.5)); // jitter: viewers don't stampede
    attempt += 1;
    setConn("retry", `offline · retry in ${Math.max(1, Math.round(delay / 1000))} s`);
    clearTimeout(retryTimer);
    retryTimer = setTimeout(connect, delay);
  }

  connEl.addEventListener("click", () => {
    if (connEl.dataset.state !== "live") {
      attempt = 0;
      waitingForToken = false;
      connect();
    }
  });
  // A phone waking up or a laptop back online should not wait out the backoff.
  window.addEventListener("online", () => {
    if (!socket) connect();
  });
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible" && !socket && !waitingForToken) connect();
  });

  // -- calls ----------------------------------------------------------------------------------

  function createCall(id, startedAt) {
    const card = template.content.firstElementChild.cloneNode(true);
    card.dataset.callId = id;
    const call = {
      id,
      caller: "",
      callerName: "",
      callee: "",
      direction: "inbound",
      state: "listening",
      startedAt: num(startedAt) ?? serverNow(),
      endedAt: null,
      ended: false,
      missedEnd: false,
      muted: false,
      partial: null, // the caller's line while they speak
      reply: null, // the bot's line while the LLM writes it: {li, text}
      lastBot: null,
      armTimer: 0,
      noticeTimer: 0,
      askAction: "",
      card,
      nameEl: card.querySelector(".caller-name"),
      numberEl: card.querySelector(".caller-number"),
      dirEl: card.querySelector(".dir"),
      stateEl: card.querySelector(".state"),
      mutedEl: card.querySelector(".muted-badge"),
      durationEl: card.querySelector(".duration"),
      transcriptEl: card.querySelector(".transcript"),
      noticeEl: card.querySelector(".notice"),
      hangupBtn: card.querySelector(".act-hangup"),
      transferBtn: card.querySelector(".act-transfer"),
      sayBtn: card.querySelector(".act-say"),
      muteBtn: card.querySelector(".act-mute"),
      askForm: card.querySelector(".ask"),
      askLabel: card.querySelector(".ask-label"),
      askInput: card.querySelector(".ask-input"),
    };
    wireActions(call);
    calls.set(id, call);
    renderHead(call);
    setState(call, "listening");
    place(call);
    updateCount();
    return call;
  }

  // Newest call first.
  function place(call) {
    call.card.dataset.started = String(call.startedAt);
    let before = null;
    for (const other of callsEl.children) {
      if (other !== call.card && Number(other.dataset.started) < call.startedAt) {
        before = other;
        break;
      }
    }
    if (call.card.nextElementSibling !== before || call.card.parentNode !== callsEl) {
      callsEl.insertBefore(call.card, before);
    }
  }

  function removeCall(call) {
    clearTimeout(call.armTimer);
    clearTimeout(call.noticeTimer);
    call.card.remove();
    calls.delete(call.id);
    updateCount();
  }

  function updateCount() {
    let active = 0;
    for (const call of calls.values()) if (!call.ended) active += 1;
    countEl.textContent = active ? `${active} active` : "";
    document.title = active ? `(${active}) voiceai · live calls` : "voiceai · live calls";
    emptyEl.hidden = calls.size > 0;
  }

  function applyInfo(call, info) {
    if (info.caller != null) call.caller = str(info.caller);
    if (info.caller_name != null) call.callerName = str(info.caller_name);
    if (info.callee != null) call.callee = str(info.callee);
    if (info.direction) call.direction = str(info.direction);
    const started = parseTime(info.started_at);
    if (started !== null && started !== call.startedAt) {
      call.startedAt = started;
      place(call);
    }
    if (typeof info.muted === "boolean") setMuted(call, info.muted);
    renderHead(call);
  }

  function renderHead(call) {
    const outbound = call.direction === "outbound";
    const number = outbound ? call.callee || call.caller : call.caller;
    call.dirEl.textContent = outbound ? "↗ out" : "↙ in";
    call.dirEl.title = outbound ? "outbound call" : "inbound call";
    call.nameEl.textContent = call.callerName || number || "Unknown caller";
    call.numberEl.textContent = call.callerName && number ? number : "";
    const who = call.nameEl.textContent;
    call.hangupBtn.setAttribute("aria-label", `Hang up the call with ${who}`);
    call.transferBtn.setAttribute("aria-label", `Transfer the call with ${who}`);
    call.sayBtn.setAttribute("aria-label", `Say something to ${who}`);
    renderDuration(call);
  }

  function renderDuration(call) {
    const end = call.ended ? call.endedAt ?? serverNow() : serverNow();
    call.durationEl.textContent = fmtDuration(end - call.startedAt);
  }

  function setState(call, state) {
    const s = str(state) || "listening";
    call.state = s;
    call.card.dataset.state = s;
    call.stateEl.textContent = STATE_LABELS[s] || s;
  }

  function setMuted(call, muted) {
    call.muted = Boolean(muted);
    call.card.classList.toggle("is-muted", call.muted);
    call.mutedEl.hidden = !call.muted;
    call.muteBtn.textContent = call.muted ? "Unmute" : "Mute";
    call.muteBtn.setAttribute("aria-pressed", String(call.muted));
  }

  function endCall(call, at) {
    if (call.ended) return;
    call.ended = true;
    call.endedAt = num(at) ?? serverNow();
    setState(call, "ended");
    call.card.classList.add("ended");
    disarm(call);
    closeAsk(call);
    for (const button of call.card.querySelectorAll(".actions button")) button.disabled = true;
    if (call.partial) {
      if (!call.partial.querySelector(".text").textContent) call.partial.remove();
      else call.partial.classList.add("stale");
      call.partial = null;
    }
    if (call.reply) {
      call.reply.li.classList.remove("streaming");
      call.reply = null;
    }
    renderDuration(call);
    updateCount();
  }

  function setEndReason(call, reason) {
    const text = str(reason);
    if (!text) return;
    call.stateEl.textContent = `ended · ${text}`;
  }

  // -- transcript -----------------------------------------------------------------------------

  function atBottom(list) {
    return list.scrollHeight - list.scrollTop - list.clientHeight < 32;
  }

  function append(call, li) {
    const list = call.transcriptEl;
    const follow = atBottom(list);
    list.appendChild(li);
    if (follow) list.scrollTop = list.scrollHeight;
  }

  function touch(call, node) {
    // Growing text keeps the view pinned to the bottom if it was there.
    const list = call.transcriptEl;
    if (node.isConnected && atBottom(list)) list.scrollTop = list.scrollHeight;
  }

  function makeLine(speaker, text, at) {
    const li = el("li", `line ${speaker}`);
    const who = { caller: "Caller", bot: "Bot", system: "" }[speaker] ?? "";
    if (who) li.appendChild(el("span", "who", who));
    li.appendChild(el("span", "text", text));
    if (at) li.title = clockTime(at);
    return li;
  }

  function addTag(li, className, text) {
    if (li.querySelector(`.tag.${className}`)) return;
    let tags = li.querySelector(".tags");
    if (!tags) {
      tags = el("span", "tags");
      const who = li.querySelector(".who");
      if (who) who.after(tags);
      else li.appendChild(tags);
    }
    tags.appendChild(el("span", `tag ${className}`, text));
  }

  function systemLine(call, text, kind, at) {
    const li = makeLine("system", text, at);
    if (kind) li.classList.add(kind);
    append(call, li);
    return li;
  }

  // The transcript from a snapshot or a record: its turns, tool calls and messages in the order
  // they happened.
  function setTurns(call, turns, record) {
    call.transcriptEl.replaceChildren();
    call.partial = null;
    call.reply = null;
    call.lastBot = null;
    for (const { kind, item } of timeline(turns, record)) {
      if (kind === "tool") call.transcriptEl.appendChild(toolLine(item, parseTime(item.at)));
      else if (kind === "message") {
        call.transcriptEl.appendChild(messageLine(item, parseTime(item.at)));
      } else call.transcriptEl.appendChild(turnLine(call, item));
    }
    call.transcriptEl.scrollTop = call.transcriptEl.scrollHeight;
  }

  function timeline(turns, record) {
    const entries = [];
    const add = (kind, list) => {
      if (!Array.isArray(list)) return;
      for (const item of list) {
        if (item && typeof item === "object") {
          entries.push({ kind, item, at: parseTime(item.at) ?? 0, order: entries.length });
        }
      }
    };
    add("turn", turns);
    if (record && typeof record === "object") {
      add("tool", record.tool_calls);
      add("message", record.messages);
    }
    return entries.sort((a, b) => a.at - b.at || a.order - b.order);
  }

  function turnLine(call, turn) {
    const speaker = turn.speaker === "bot" ? "bot" : "caller";
    const li = makeLine(speaker, str(turn.text));
    if (speaker === "bot") {
      if (turn.interrupted === true) markInterrupted(li);
      if (turn.timings && num(turn.timings.playback_started) !== null) {
        renderLatency(li, turn.timings);
      }
      call.lastBot = li;
    }
    return li;
  }

  function clip(text, max) {
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  // A tool's argument as the model gave it: a plain word bare, anything else as JSON.
  function argText(value) {
    if (typeof value === "string" && /^[\w.+@:/-]+$/.test(value)) return value;
    try {
      return JSON.stringify(value) ?? str(value);
    } catch {
      return str(value);
    }
  }

  // "🔧 order_status(order_number=123) → 'shipped' · 420 ms"; red when the tool failed.
  function toolLine(data, at) {
    const args = data.arguments && typeof data.arguments === "object" ? data.arguments : {};
    const invocation = `${str(data.name)}(${Object.entries(args)
      .map(([key, value]) => `${key}=${argText(value)}`)
      .join(", ")})`;
    const result = str(data.result);
    const duration = num(data.duration_ms) === null ? "" : ` · ${fmtMs(data.duration_ms)}`;
    const shown = `${clip(invocation, TOOL_TEXT_MAX)} → '${clip(result, TOOL_TEXT_MAX)}'`;
    const li = makeLine("system", `🔧 ${shown}${duration}`, at);
    li.classList.add("tool");
    const failed = data.ok !== true;
    if (failed) li.classList.add("failed");
    li.dataset.ok = String(!failed);
    li.title = [clockTime(at), `${invocation} → ${result}`].filter(Boolean).join("\n");
    return li;
  }

  // "✉ message from NAME, call back NUMBER: TEXT", set apart: someone has to act on it.
  function messageLine(data, at) {
    const from = str(data.name) || "unknown caller";
    const back = str(data.callback_number) ? `, call back ${str(data.callback_number)}` : "";
    const li = makeLine("system", `✉ message from ${from}${back}: ${str(data.message)}`, at);
    li.classList.add("message");
    return li;
  }

  function callerSpeaking(call, at) {
    if (call.partial && call.partial.isConnected) {
      call.partial.querySelector(".text").textContent = ""; // a new turn: the last was noise
      return call.partial;
    }
    const li = makeLine("caller", "", at);
    li.classList.add("partial");
    call.partial = li;
    append(call, li);
    return li;
  }

  function markInterrupted(li) {
    li.classList.add("interrupted");
    addTag(li, "interrupted", "interrupted");
  }

  function botLine(call, at) {
    if (!call.reply) {
      const li = makeLine("bot", "", at);
      li.classList.add("streaming");
      call.reply = { li, text: "" };
      append(call, li);
    }
    return call.reply;
  }

  function renderLatency(li, timings) {
    let box = li.querySelector(".latency");
    if (!box) {
      box = el("span", "latency");
      const chip = el("button", "latency-chip");
      chip.type = "button";
      chip.setAttribute("aria-expanded", "false");
      chip.addEventListener("click", () => {
        const open = box.classList.toggle("open");
        chip.setAttribute("aria-expanded", String(open));
      });
      box.appendChild(chip);
      box.appendChild(el("dl", "stages"));
      li.appendChild(box);
    }
    const chip = box.querySelector(".latency-chip");
    const stages = box.querySelector(".stages");
    const total = num(timings.playback_started);
    chip.textContent = total === null ? "answering…" : `answered in ${fmtMs(total)}`;
    box.dataset.speed = total === null ? "" : total < 1500 ? "fast" : total < 3000 ? "ok" : "slow";
    stages.replaceChildren();
    const lines = [];
    const rows = [...STAGES];
    for (const key of Object.keys(timings)) {
      if (!STAGES.some(([k]) => k === key)) rows.push([key, key.replaceAll("_", " ")]);
    }
    for (const [key, label] of rows) {
      const value = num(timings[key]);
      if (value === null) continue;
      stages.appendChild(el("dt", "", label));
      stages.appendChild(el("dd", "", fmtMs(value)));
      lines.push(`${label}: ${fmtMs(value)}`);
    }
    chip.title = `after the caller's last word\n${lines.join("\n")}`;
  }

  function finishReply(call, data, at) {
    const pending = call.reply;
    const li = pending ? pending.li : makeLine("bot", "", at);
    const streamed = pending ? pending.text : "";
    const heard = str(data.text);
    const full = str(data.reply) || streamed;
    const interrupted = data.interrupted === true;
    if (!heard && !full && !interrupted) {
      if (pending) li.remove();
      call.reply = null;
      return;
    }
    const textEl = li.querySelector(".text");
    textEl.textContent = heard || (interrupted ? "" : full);
    li.classList.remove("streaming");
    if (interrupted) {
      markInterrupted(li);
      const unheard = unheardPart(heard, full);
      if (unheard) li.insertBefore(el("span", "unheard", unheard), textEl.nextSibling);
      if (!heard) textEl.textContent = "(stopped before the caller heard anything)";
      if (!heard) textEl.classList.add("nothing");
    }
    if (data.timings && Object.keys(data.timings).length) renderLatency(li, data.timings);
    if (!pending) append(call, li);
    call.reply = null;
    call.lastBot = li;
    touch(call, li);
  }

  // What the bot had written but the caller did not hear (shown struck through).
  function unheardPart(heard, full) {
    if (!full) return "";
    const said = heard.replace(/…$/, "").trim();
    if (!said) return full.trim();
    const norm = (s) => s.replace(/\s+/g, " ");
    const fullN = norm(full).trim();
    const saidN = norm(said);
    return fullN.startsWith(saidN) ? fullN.slice(saidN.length).trim() : "";
  }

  // -- events ---------------------------------------------------------------------------------

  // Events that may introduce a call this page has not seen (connected mid-call, no snapshot).
  const CREATES = new Set([
    "call.dialing",
    "call.started",
    "call.state",
    "speech.started",
    "transcript.partial",
    "transcript.final",
    "reply.delta",
    "bot.said",
    "turn.latency",
    "barge_in",
    "dtmf",
    "call.muted",
    "call.transferred",
    "tool.called",
    "message.taken",
  ]);

  const handlers = {
    snapshot(_call, data) {
      const list = Array.isArray(data.calls) ? data.calls : [];
      const seen = new Set();
      for (const summary of list) {
        if (!summary || typeof summary.id !== "string") continue;
        seen.add(summary.id);
        const call = calls.get(summary.id) || createCall(summary.id, parseTime(summary.started_at));
        if (call.ended) continue; // ended here already; the snapshot raced its end
        applyInfo(call, summary);
        if (summary.state) setState(call, summary.state);
        if (Array.isArray(summary.turns)) setTurns(call, summary.turns, summary);
      }
      for (const call of calls.values()) {
        if (!call.ended && !seen.has(call.id)) {
          call.missedEnd = true; // ended while this page was offline; the record fills it in
          endCall(call, serverNow());
        }
      }
      loadRecentEnded();
    },
    "call.dialing"(call, data) {
      call.direction = "outbound";
      if (data.to != null) call.callee = str(data.to);
      setState(call, "dialing");
      renderHead(call);
    },
    "call.started"(call, data) {
      applyInfo(call, data);
      setState(call, data.state || "listening");
    },
    "call.state"(call, data, event) {
      if (data.state === "ended") endCall(call, event.at);
      else if (!call.ended) setState(call, data.state);
    },
    "speech.started"(call, _data, event) {
      if (!call.ended) callerSpeaking(call, event.at);
    },
    "transcript.partial"(call, data, event) {
      if (call.ended) return;
      const live = call.partial && call.partial.isConnected;
      const li = live ? call.partial : callerSpeaking(call, event.at);
      li.querySelector(".text").textContent = str(data.text);
      touch(call, li);
    },
    "transcript.final"(call, data, event) {
      const text = str(data.text);
      let li = call.partial && call.partial.isConnected ? call.partial : null;
      call.partial = null;
      if (!text) {
        if (li) li.remove();
        return;
      }
      if (!li) {
        li = makeLine("caller", "", event.at);
        append(call, li);
      }
      li.classList.remove("partial", "stale");
      li.querySelector(".text").textContent = text;
      if (data.backchannel === true) {
        li.classList.add("backchannel");
        addTag(li, "backchannel", "backchannel");
      }
      touch(call, li);
    },
    "reply.delta"(call, data, event) {
      if (call.ended) return;
      const reply = botLine(call, event.at);
      reply.text += str(data.text);
      reply.li.querySelector(".text").textContent = reply.text;
      touch(call, reply.li);
    },
    "turn.latency"(call, data) {
      const li = call.reply ? call.reply.li : call.lastBot;
      if (li) renderLatency(li, data);
    },
    "bot.said"(call, data, event) {
      finishReply(call, data, event.at);
    },
    barge_in(call) {
      if (call.reply) markInterrupted(call.reply.li);
    },
    dtmf(call, data, event) {
      systemLine(call, `caller pressed ${str(data.digit)}`, "dtmf", event.at);
    },
    "call.muted"(call, data, event) {
      setMuted(call, data.muted === true);
      systemLine(call, data.muted ? "bot muted" : "bot unmuted", "info", event.at);
    },
    "call.transferred"(call, data, event) {
      setState(call, "transferred");
      const why = str(data.reason);
      systemLine(call, `transferred to ${str(data.to)}${why ? ` (${why})` : ""}`, "info", event.at);
    },
    "tool.called"(call, data, event) {
      append(call, toolLine(data, event.at));
    },
    "message.taken"(call, data, event) {
      append(call, messageLine(data, event.at));
    },
    "call.error"(call, data, event) {
      const kind = str(data.kind);
      systemLine(call, `${kind ? `${kind}: ` : ""}${str(data.message)}`, "error", event.at);
    },
    "call.hangup"(call, data, event) {
      endCall(call, event.at);
      setEndReason(call, data.cause);
    },
    "call.ended"(call, data, event) {
      endCall(call, event.at);
      setEndReason(call, data.hangup_cause || data.reason);
    },
  };

  function handle(event) {
    if (!event || typeof event !== "object" || typeof event.type !== "string") return;
    const data = event.data && typeof event.data === "object" ? event.data : {};
    const at = num(event.at);
    noteServerTime(at);
    if (event.type === "esl.state") {
      setEsl(data.state);
      return;
    }
    const handler = handlers[event.type];
    if (!handler) return; // unknown types are for other listeners
    if (event.type === "snapshot") {
      handler(null, data, event);
      return;
    }
    const id = str(event.call_id);
    if (!id) return;
    let call = calls.get(id);
    if (!call) {
      if (!CREATES.has(event.type)) return; // e.g. a hangup of a channel the bot never had
      call = createCall(id, at);
    }
    handler(call, data, event);
  }

  // -- actions --------------------------------------------------------------------------------

  function notice(call, text, kind) {
    clearTimeout(call.noticeTimer);
    call.noticeEl.textContent = text;
    call.noticeEl.dataset.kind = kind;
    call.noticeEl.hidden = !text;
    if (text && kind !== "error") {
      call.noticeTimer = setTimeout(() => {
        call.noticeEl.hidden = true;
      }, 4000);
    }
  }

  async function act(call, button, action, body, done) {
    button.disabled = true;
    call.card.classList.add("busy");
    try {
      const result = await api("POST", callPath(call.id, action), body);
      if (result.ok) {
        notice(call, done(result.data), "info");
        return true;
      }
      notice(call, result.detail, "error");
      return false;
    } finally {
      call.card.classList.remove("busy");
      button.disabled = call.ended;
    }
  }

  function disarm(call) {
    clearTimeout(call.armTimer);
    call.hangupBtn.classList.remove("armed");
    call.hangupBtn.textContent = "Hang up";
    renderHead(call); // puts the plain aria-label back
  }

  function openAsk(call, action) {
    call.askAction = action;
    const transfer = action === "transfer";
    call.askLabel.textContent = transfer ? "Transfer to number" : "Say to the caller";
    call.askInput.value = "";
    call.askInput.type = transfer ? "tel" : "text";
    call.askInput.inputMode = transfer ? "tel" : "text";
    call.askInput.placeholder = transfer ? "+15551234567" : "Text the bot speaks now";
    call.askInput.maxLength = transfer ? 40 : 1000;
    call.askForm.hidden = false;
    call.askForm.querySelector(".ask-send").textContent = transfer ? "Transfer" : "Say";
    call.askInput.focus();
  }

  function closeAsk(call) {
    call.askForm.hidden = true;
    call.askAction = "";
  }

  function wireActions(call) {
    call.hangupBtn.addEventListener("click", async () => {
      if (!call.hangupBtn.classList.contains("armed")) {
        // Two taps: a phone in a pocket must not hang up on a caller.
        call.hangupBtn.classList.add("armed");
        call.hangupBtn.textContent = "Confirm";
        call.hangupBtn.setAttribute("aria-label", "Confirm: hang up this call");
        clearTimeout(call.armTimer);
        call.armTimer = setTimeout(() => disarm(call), ARM_MS);
        return;
      }
      disarm(call);
      await act(call, call.hangupBtn, "hangup", undefined, () => "hanging up…");
    });
    call.transferBtn.addEventListener("click", () => openAsk(call, "transfer"));
    call.sayBtn.addEventListener("click", () => openAsk(call, "say"));
    call.muteBtn.addEventListener("click", async () => {
      const action = call.muted ? "unmute" : "mute";
      await act(call, call.muteBtn, action, undefined, (data) => {
        if (data && typeof data.muted === "boolean") setMuted(call, data.muted);
        return call.muted ? "bot muted: it listens but does not answer" : "bot unmuted";
      });
    });
    call.askForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const value = call.askInput.value.trim();
      if (!value) return;
      const action = call.askAction;
      const send = call.askForm.querySelector(".ask-send");
      const body = action === "transfer" ? { to: value } : { text: value };
      const ok = await act(call, send, action, body, () =>
        action === "transfer" ? `transferring to ${value}…` : "saying it now",
      );
      if (ok) closeAsk(call);
      else call.askInput.focus();
    });
    call.askForm.querySelector(".ask-cancel").addEventListener("click", () => closeAsk(call));
    call.askForm.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeAsk(call);
    });
  }

  // -- clock ------------------------------------------------------------------------------------

  setInterval(() => {
    const now = serverNow();
    for (const call of [...calls.values()]) {
      if (call.ended && now - call.endedAt > KEEP_ENDED_MS / 1000) removeCall(call);
      else if (!call.ended) renderDuration(call);
    }
  }, 1000);

  token = loadToken();
  tokenInput.value = token;
  showTokenForm(false);
  updateCount();
  connect();
})();
