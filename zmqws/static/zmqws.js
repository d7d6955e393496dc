/**
 * zmqws.js: the browser client of the zmqws gateway. No dependencies, ES5.
 *
 * Tries WebSocket, then Server-Sent Events, then long-polling (all in the
 * JSON envelope), resumes every reconnect with `since=lastId` and drops any
 * message it has already delivered.
 *
 *   var s = new ZmqWs("/", {topics: ["prices."]});
 *   s.onmessage = function (msg) { console.log(msg.id, msg.topic, msg.data); };
 *   s.onstatechange = function (state, transport) {};
 *   s.ongap = function (first, last) {};
 *
 * Load it with a plain <script> (it sets `window.ZmqWs`) or require() it.
 */
(function (root) {
  "use strict";

  var TRANSPORTS = ["websocket", "sse", "poll"];

  /**
   * A connection to the gateway that survives drops and switches transports.
   * It starts connecting on the next tick, so handlers set right after the
   * constructor see every event.
   * @constructor
   * @param {string} [url="/"] the gateway: "/", "http(s)://host:port/" or "ws(s)://host:port/".
   * @param {Object} [options]
   * @param {string[]} [options.topics] topic prefixes; none means every message.
   * @param {string[]} [options.transports] the order to try; default websocket, sse, poll.
   * @param {number} [options.pollTimeout=35000] ms before a long-poll request is given up.
   * @param {number} [options.openTimeout=4000] ms a transport gets to open.
   * @param {number} [options.minDelay=500] first reconnect delay (ms), doubled per failure...
   * @param {number} [options.maxDelay=10000] ...up to this.
   * @param {number} [options.maxFailures=3] failed attempts before moving to the next transport.
   * @param {number} [options.since] resume after this message id.
   */
  function ZmqWs(url, options) {
    if (!(this instanceof ZmqWs)) return new ZmqWs(url, options);
    var o = options || {}, self = this, i, base = bases(url || "/");
    /** @type {string} HTTP base URL (ends with "/"); SSE and polling use events and poll under it. */
    this.url = base[0];
    this._wsUrl = base[1];
    /** @type {string[]} the current topic prefixes (read only: use subscribe/unsubscribe). */
    this.topics = (o.topics || []).slice();
    /** @type {string[]} the transports, in the order tried. */
    this.transports = [];
    for (i = 0; i < (o.transports || TRANSPORTS).length; i++) {
      var t = (o.transports || TRANSPORTS)[i];
      if (indexOf(TRANSPORTS, t) >= 0 && indexOf(this.transports, t) < 0) this.transports.push(t);
    }
    if (!this.transports.length) this.transports = TRANSPORTS.slice();
    this.pollTimeout = o.pollTimeout || 35000;
    this.openTimeout = o.openTimeout || 4000;
    this.minDelay = o.minDelay || 500;
    this.maxDelay = o.maxDelay || 10000;
    this.maxFailures = o.maxFailures || 3;
    /** @type {?number} id of the last message delivered (null before the first). */
    this.lastId = o.since != null ? Number(o.since) : null;
    /** @type {string} "connecting", "open" or "closed". */
    this.state = "connecting";
    /** @type {?string} the transport in use or being tried: "websocket", "sse" or "poll". */
    this.transport = null;
    /** @type {?function({id:number, topic:string, data:string, binary:boolean})} */
    this.onmessage = null;
    /** @type {?function(string, ?string)} called with (state, transport). */
    this.onstatechange = null;
    /** @type {?function(number, number)} messages first..last are lost (evicted from the history). */
    this.ongap = null;
    this._index = 0;      // transport being used, in this.transports
    this._fails = 0;      // consecutive attempts that never opened, on this transport
    this._retry = 0;      // consecutive back-offs, since the last open
    this._worked = {};    // transports that have opened at least once
    this._conn = null;    // the current attempt
    this._shown = null;   // the transport last reported to onstatechange
    this._closed = false;
    this._timer = setTimeout(function () { self._timer = null; self._connect(); }, 0);
  }

  /** @type {string} */
  ZmqWs.version = "0.1.0";

  /** Add a topic prefix (over WebSocket a control message, else a reconnect with since=lastId). */
  ZmqWs.prototype.subscribe = function (topic) {
    topic = String(topic);
    if (indexOf(this.topics, topic) >= 0) return;
    this.topics.push(topic);
    this._retopic({subscribe: topic});
  };

  /** Remove a topic prefix. Removing the last one means every message again (a reconnect). */
  ZmqWs.prototype.unsubscribe = function (topic) {
    var i = indexOf(this.topics, String(topic));
    if (i < 0) return;
    this.topics.splice(i, 1);
    this._retopic(this.topics.length ? {unsubscribe: String(topic)} : null);
  };

  /**
   * Send a text (or binary) message upstream: only over an open WebSocket.
   * @returns {boolean} whether it was sent.
   */
  ZmqWs.prototype.send = function (data) {
    var c = this._conn;
    if (!c || c.name !== "websocket" || !c.open) return false;
    try { c.impl.send(data); return true; } catch (e) { return false; }
  };

  /** Close for good: no more events after the final "closed" state. */
  ZmqWs.prototype.close = function () {
    this._closed = true;
    clearTimeout(this._timer);
    this._teardown();
    this._setState("closed");
  };

  /** Start one attempt on the current transport. */
  ZmqWs.prototype._connect = function () {
    var self = this, name = this.transports[this._index];
    var conn = {name: name, open: false, impl: null};
    var live = function () { return self._conn === conn; };
    var h = {
      open: function () {
        if (!live() || conn.open) return;
        clearTimeout(conn.timer);
        conn.open = true;
        self._fails = self._retry = 0;
        self._worked[name] = true;
        self._setState("open");
      },
      data: function (obj) { if (live()) self._receive(obj); },
      fail: function () { if (live()) self._fail(conn); }
    };
    this._conn = conn;
    this.transport = name;
    this._setState("connecting");
    conn.timer = setTimeout(function () {
      if (conn.impl && conn.impl.patient) h.open();   // a long poll held by the server is fine
      else h.fail();
    }, this.openTimeout);
    try { conn.impl = OPENERS[name](this, h); } catch (e) { h.fail(); }
  };

  /** An attempt failed or an open transport dropped: pick the transport and delay of the next. */
  ZmqWs.prototype._fail = function (conn) {
    var delay = -1;
    this._teardown();
    if (!conn.open) {
      this._fails++;
      if (!this._worked[conn.name] || this._fails >= this.maxFailures) {
        this._fails = 0;
        this._index = (this._index + 1) % this.transports.length;
        if (this._index !== 0) delay = 0;   // the next transport at once; back off on a wrap-around
      }
    }
    if (delay < 0) {
      delay = Math.min(this.maxDelay, this.minDelay * Math.pow(2, this._retry++));
      delay = Math.min(this.maxDelay, delay * (0.8 + 0.4 * Math.random()));
    }
    this._setState("closed");
    var self = this;
    this._timer = setTimeout(function () { self._timer = null; if (!self._closed) self._connect(); }, delay);
  };

  /** Stop the current attempt, silently. */
  ZmqWs.prototype._teardown = function () {
    var c = this._conn;
    if (!c) return;
    this._conn = null;
    clearTimeout(c.timer);
    if (c.impl) { try { c.impl.close(); } catch (e) { /* already gone */ } }
  };

  /** Apply a topic change: a control message on an open WebSocket, else a fresh connection. */
  ZmqWs.prototype._retopic = function (control) {
    var c = this._conn;
    if (!c) return;   // closed, or waiting to retry: the next attempt uses the new topics
    if (control && c.name === "websocket" && c.open) { c.impl.send(JSON.stringify(control)); return; }
    this._teardown();
    this._connect();  // same transport, since=lastId; not a failure
  };

  /** One object from the server: a gap notice, a message (deduplicated), a message the
   *  application sent to this client alone (--rpc "send": id null, outside the numbered
   *  stream) or an ack (ignored). */
  ZmqWs.prototype._receive = function (obj) {
    if (!obj || typeof obj !== "object") return;
    if (obj.gap) {
      // A gap from past our last id: ids of another run; take the server's from here on.
      if (this.lastId !== null && obj.gap[0] - 1 < this.lastId) this.lastId = obj.gap[0] - 1;
      emit(this, "ongap", [obj.gap[0], obj.gap[1]]);
      return;
    }
    if (obj.id === null && "topic" in obj && "data" in obj) {
      emit(this, "onmessage", [{id: null, topic: obj.topic, data: obj.data, binary: !!obj.binary}]);
      return;
    }
    if (typeof obj.id !== "number") return;
    if (this.lastId !== null && obj.id <= this.lastId) return;
    this.lastId = obj.id;
    emit(this, "onmessage", [{id: obj.id, topic: obj.topic, data: obj.data, binary: !!obj.binary}]);
  };

  ZmqWs.prototype._setState = function (state) {
    if (state === this.state && this.transport === this._shown) return;
    this.state = state;
    this._shown = this.transport;
    emit(this, "onstatechange", [state, this.transport]);
  };

  /** The query of the next request: format, topics and resume point. */
  ZmqWs.prototype._query = function () {
    var q = "?format=json", i;
    for (i = 0; i < this.topics.length; i++) q += "&topic=" + encodeURIComponent(this.topics[i]);
    if (this.lastId !== null) q += "&since=" + this.lastId;
    return q;
  };

  /**
   * Transport openers: (client, handlers) -> {close(), send?(), patient?}. They call
   * handlers.open() once open, handlers.data(obj) per object and handlers.fail() on error.
   */
  var OPENERS = {
    websocket: function (self, h) {
      var WS = root.WebSocket;
      if (!WS) throw new Error("no WebSocket");
      var ws = new WS(self._wsUrl + self._query());
      ws.onopen = h.open;
      ws.onmessage = function (ev) { if (typeof ev.data === "string") h.data(parse(ev.data)); };
      ws.onerror = function () {};
      ws.onclose = h.fail;
      return {
        send: function (data) { ws.send(data); },
        close: function () { ws.onopen = ws.onmessage = ws.onclose = null; ws.close(); }
      };
    },
    sse: function (self, h) {
      var ES = root.EventSource;
      if (!ES) throw new Error("no EventSource");
      var es = new ES(self.url + "events" + self._query());
      var data = function (ev) { h.data(parse(ev.data)); };
      es.onopen = h.open;
      es.onmessage = data;
      es.addEventListener("gap", data);
      es.onerror = h.fail;   // we reconnect ourselves: back-off, fallback and since=lastId
      return { close: function () { es.onopen = es.onmessage = es.onerror = null; es.close(); } };
    },
    poll: function (self, h) {
      var req = null, stopped = false;
      function next() {
        req = get(self.url + "poll" + self._query(), self.pollTimeout, function (err, text, last) {
          req = null;
          var list = err ? null : parse(text), i;
          if (Object.prototype.toString.call(list) !== "[object Array]") return h.fail();
          // A first poll that timed out empty: resume from the gateway's last id, so that
          // nothing published before the next poll is missed.
          if (self.lastId == null && last && /^\d+$/.test(last)) self.lastId = Number(last);
          h.open();
          for (i = 0; i < list.length && !stopped; i++) h.data(list[i]);
          if (!stopped) next();
        });
      }
      next();
      return { patient: true, close: function () { stopped = true; if (req) req.abort(); } };
    }
  };

  /** GET a URL as text: done(error, text, X-Zmqws-Last-Id) once. XMLHttpRequest, else fetch.
   *  Returns {abort()}. */
  function get(url, timeout, done) {
    var finished = false, X = root.XMLHttpRequest, timer;
    function end(err, text, last) { if (!finished) { finished = true; clearTimeout(timer); done(err, text, last); } }
    if (X) {
      var xhr = new X();
      xhr.open("GET", url, true);
      xhr.timeout = timeout;
      xhr.onload = function () {
        end(xhr.status === 200 ? null : new Error("HTTP " + xhr.status), xhr.responseText,
            xhr.getResponseHeader("X-Zmqws-Last-Id"));
      };
      xhr.onerror = xhr.ontimeout = function () { end(new Error("poll failed")); };
      xhr.send();
      return { abort: function () { finished = true; xhr.abort(); } };
    }
    var ctl = root.AbortController ? new root.AbortController() : null;
    timer = setTimeout(function () { if (ctl) ctl.abort(); end(new Error("timeout")); }, timeout);
    root.fetch(url, {cache: "no-store", signal: ctl ? ctl.signal : undefined}).then(function (r) {
      return r.text().then(function (text) {
        end(r.status === 200 ? null : new Error("HTTP " + r.status), text, r.headers.get("X-Zmqws-Last-Id"));
      });
    }).then(null, function (e) { end(e); });
    return { abort: function () { finished = true; clearTimeout(timer); if (ctl) ctl.abort(); } };
  }

  /** [http base, ws base] from "/", "http(s)://h/…" or "ws(s)://h/…"; both end with "/". */
  function bases(url) {
    var m = /^(\w+):\/\/([^\/?#]+)([^?#]*)/.exec(url), loc = root.location, scheme, host, path;
    if (m) { scheme = m[1].toLowerCase(); host = m[2]; path = m[3]; }
    else { scheme = loc ? loc.protocol.replace(":", "") : "http"; host = loc ? loc.host : ""; path = url; }
    if (path.charAt(0) !== "/") path = "/" + path;
    if (path.charAt(path.length - 1) !== "/") path += "/";
    var secure = scheme === "https" || scheme === "wss";
    return [(secure ? "https://" : "http://") + host + path, (secure ? "wss://" : "ws://") + host + path];
  }

  function parse(text) { try { return JSON.parse(text); } catch (e) { return null; } }

  function indexOf(list, item) {
    for (var i = 0; i < list.length; i++) if (list[i] === item) return i;
    return -1;
  }

  /** Call a user handler; an exception is rethrown later so it cannot break the client. */
  function emit(self, name, args) {
    if (typeof self[name] !== "function") return;
    try { self[name].apply(self, args); } catch (e) { setTimeout(function () { throw e; }, 0); }
  }

  root.ZmqWs = ZmqWs;
  if (typeof module !== "undefined" && module.exports) module.exports = ZmqWs;
})(typeof window !== "undefined" ? window : typeof globalThis !== "undefined" ? globalThis : this);
