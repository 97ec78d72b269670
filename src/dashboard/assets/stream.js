// The live event stream (server-sent events) read with fetch(), because EventSource cannot send
// an Authorization header. On any break it reconnects by itself with Last-Event-ID set to the
// last event it delivered, and the server replays what was missed; ids already delivered are
// dropped here too, so a replay that overlaps never shows an event twice.

const STREAM = "/api/admin/security/events/stream";
const MAX_BACKOFF_MS = 10_000;

export class EventStream {
  /**
   * @param session the signed-in Session
   * @param onEvent called once per event id, in arrival order
   * @param onState called with "connecting" | "live" | "reconnecting" | "stopped"
   */
  constructor(session, onEvent, onState) {
    this.session = session;
    this.onEvent = onEvent;
    this.onState = onState;
    this.lastId = null;
    this.seen = new Set();
    this.controller = null;
    /** Bumped by every start and stop: a loop from an earlier start sees it and ends. */
    this.generation = 0;
  }

  /** Starts after `lastId` (the newest event already shown), or live-only when null. */
  start(lastId) {
    this.stop();
    this.lastId = lastId;
    this.run(this.generation);
  }

  stop() {
    this.generation += 1;
    if (this.controller) this.controller.abort();
    this.onState("stopped");
  }

  /** Marks ids shown from another source (the initial page) as delivered. */
  markSeen(id) {
    this.seen.add(id);
  }

  async run(generation) {
    const stopped = () => generation !== this.generation;
    let backoff = 500;
    while (!stopped()) {
      this.onState(this.lastId ? "reconnecting" : "connecting");
      try {
        await this.connectOnce(generation, () => {
          backoff = 500;
          this.onState("live");
        });
      } catch (error) {
        if (stopped()) return;
        if (error && error.status === 403) {
          this.session.onForbidden();
          return;
        }
      }
      if (stopped()) return;
      this.onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, backoff));
      backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
    }
  }

  async connectOnce(generation, onOpen) {
    if (!this.session.signedIn) throw new Error("signed out");
    const controller = new AbortController();
    this.controller = controller;
    const headers = this.session.authHeaders({ Accept: "text/event-stream" });
    if (this.lastId) headers["Last-Event-ID"] = this.lastId;
    const response = await fetch(STREAM, {
      headers,
      cache: "no-store",
      credentials: "omit",
      signal: controller.signal,
    });
    if (response.status === 401) {
      await this.session.refresh();
      return;
    }
    if (!response.ok || !response.body) {
      const error = new Error(`stream answered ${response.status}`);
      error.status = response.status;
      throw error;
    }
    onOpen();
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser((message) => {
      if (generation === this.generation) this.deliver(message);
    });
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }

  deliver(message) {
    if (message.event !== "security-event" || !message.data) return;
    let event;
    try {
      event = JSON.parse(message.data);
    } catch {
      return;
    }
    const id = message.id || event.id;
    if (id) this.lastId = id;
    if (!id || this.seen.has(id)) return;
    this.seen.add(id);
    if (this.seen.size > 20_000) this.seen = new Set([...this.seen].slice(-10_000));
    this.onEvent(event);
  }
}

/** The text/event-stream format (HTML Living Standard, "Server-sent events"), incrementally. */
export class SseParser {
  constructor(onMessage) {
    this.onMessage = onMessage;
    this.buffer = "";
    this.reset();
  }

  reset() {
    this.event = "";
    this.data = [];
    this.id = "";
  }

  push(chunk) {
    this.buffer += chunk;
    // A trailing "\r" may be the first half of "\r\n": wait for the next chunk to decide.
    const lines = this.buffer.split(/\r\n|\n|\r(?!$)/);
    this.buffer = lines.pop();
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      if (this.data.length) {
        this.onMessage({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
      }
      this.reset();
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.event = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.id = value;
  }
}
