/*
 * httpclient: the load client of benchmarks/transports.py for zmqws's HTTP transports:
 * Server-Sent Events and long-polling (docs/usage.md, "HTTP fallbacks"), and Socket.IO over
 * Engine.IO long-polling.
 *
 *   httpclient --mode sse|poll|eio --port P --conns C --messages N [--host H] [--path PATH]
 *              [--sample-every K] [--timeout S] [--idle S] [--connect-timeout S] [--parallel K]
 *
 * --mode sse   each connection sends "GET /events" and reads the endless event stream
 *              (HTML Living Standard §9.2): "id:", "event:", "data:" lines, an empty line
 *              ends an event, ":" lines are comments (heartbeats).  A binary payload is an
 *              event of type "binary" whose data is base64; a gap notice is an event of type
 *              "gap" (counted as gap_notices).  Ready when the 200 head has arrived.
 * --mode poll  each connection sends "GET /poll" (HTTP/1.1 keep-alive), reads the answer
 *              (Content-Length), a JSON array of {"id":N,"topic":..,"data":"BASE64",
 *              "binary":true} objects (a {"gap":[first,last]} object first when the gateway
 *              cannot vouch for every id: gap_notices), and asks again at once with
 *              ?since=<the last id given> (the X-Zmqws-Last-Id header when the answer named
 *              none).  An answer with "Connection: close" (--max-requests-per-connection)
 *              or an EOF is followed by a new connection that goes on from the same id.
 *              Ready when every connection has sent its first request.
 * --mode eio   Engine.IO v4 long-polling sessions carrying Socket.IO v5 (the protocol of
 *              socket.io-client with transports ["polling"]): the handshake
 *              "GET /socket.io/?EIO=4&transport=polling" answers "0{"sid":...}"; "40" (the
 *              CONNECT of namespace /) and "3" (the pong of each "2" ping) are POSTed on a
 *              second keep-alive connection of the session; GETs with &sid= follow one another
 *              on the first.  An answer is packets separated by 0x1e; each message is a "45"
 *              BINARY_EVENT packet followed by its attachment, "b" + base64.  Ready when every
 *              session has its CONNECT answer ("40...").
 *
 * Every request carries "Host: localhost" (the gateway's Host check).  The payload's first
 * 16 bytes (after base64 decoding) are what the benchmark's publisher puts there:
 *
 *     bytes 0..7   send time, CLOCK_MONOTONIC nanoseconds, little-endian
 *     bytes 8..15  sequence number 0..N-1, little-endian
 *
 * and are checked as loadclient.c does: per connection, sequence numbers must grow by one
 * (a jump counts the skipped messages as gaps); every --sample-every'th connection records
 * the latency of each message (time of the read() that completed it minus the send time)
 * in a histogram.  A connection is done when it has seen sequence number N-1.  The run ends
 * when every connection is done, or nothing arrived for --idle seconds after the first
 * message, or --timeout seconds after READY.  Prints "READY <conns> <seconds>", then one
 * JSON line with the same fields as loadclient's report (CPU time between the first and
 * last message, latency percentiles, ...) plus gap_notices, requests, reconnects,
 * posts (eio), http_errors and unparsed (events or objects without a binary payload).
 *
 * One thread, epoll, non-blocking sockets, one read() of up to 256 KiB per ready socket per
 * epoll round.
 *
 * Build: gcc -O2 -o httpclient httpclient.c   (benchmarks/transports.py does it)
 */
#define _GNU_SOURCE
#include <stdint.h>

enum { S_CONNECTING = 0, S_HEAD, S_BODY, S_STREAM, S_DONE, S_CLOSED };
enum { P_NONE = 0, P_CONNECTING, P_IDLE, P_WAIT };  /* eio: the POST connection */
enum { M_SSE = 0, M_POLL, M_EIO };

#define DATA_PREFIX 16         /* timestamp + sequence */
#define B64_PREFIX 24          /* base64 characters that hold them */
#define LINE_KEEP 64           /* bytes of an SSE line kept (the field name + the data prefix) */
#define HEAD_MAX 4096

typedef struct {
    int fd;
    int state;
    int sampled;
    int done;
    int ready;                  /* counted in the READY phase */
    uint64_t received;
    uint64_t next_seq;
    uint64_t gaps;
    uint64_t out_of_order;
    /* response head (both modes) */
    char head[HEAD_MAX];
    uint32_t head_len;
    /* SSE: the current line (its first LINE_KEEP bytes) and event */
    char line[LINE_KEEP];
    uint32_t line_len;
    int ev_binary, ev_gap, ev_data;
    char ev_prefix[B64_PREFIX];
    uint32_t ev_prefix_len;
    /* poll */
    char *body;
    uint64_t body_len, body_want, body_cap;
    uint64_t since;
    int have_since;
    int keep_alive;
    uint64_t header_last_id;
    /* eio */
    char sid[64];
    int attachment;             /* a "45" packet came: its binary attachment is next */
    int pfd, pstate;            /* the POST connection */
    int need_connect, pongs;    /* packets to POST: "40", "3" x pongs */
    char phead[512];
    uint32_t phead_len;
    int64_t pbody_left;         /* -1: reading the head */
} conn_t;

#define CLIENT_NAME "httpclient"
#include "loadcommon.h"

static int mode = -1;
static uint64_t gap_notices, requests, reconnects, http_errors, unparsed, posts;
static int counting;

/* Decode the first B64_PREFIX base64 characters of s (standard alphabet, RFC 4648 §4) into
   out; returns the bytes decoded (16 or more when s holds a whole header), -1 if not base64. */
static int b64_prefix(const char *s, size_t n, uint8_t *out) {
    static int8_t tab[256];
    static int init;
    if (!init) {
        memset(tab, -1, sizeof tab);
        const char *a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for (int i = 0; i < 64; i++) tab[(uint8_t)a[i]] = i;
        init = 1;
    }
    if (n > B64_PREFIX) n = B64_PREFIX;
    int got = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=') break;
        int v = tab[(uint8_t)s[i]];
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[got++] = (uint8_t)(acc >> bits);
        }
    }
    return got;
}

/* One message: its base64 payload prefix; t is the time of the read that completed it. */
static void on_message(conn_t *c, const char *b64, size_t n, int64_t t) {
    uint8_t p[B64_PREFIX];
    if (b64_prefix(b64, n, p) < DATA_PREFIX) { unparsed++; return; }
    c->received++;
    check_message(c, &c->next_seq, le64(p), le64(p + 8), t);
    check_done(c);
}

static void mark_ready(conn_t *c) {
    if (c->ready) return;
    c->ready = 1;
    ready_count++;
    pending--;
}

static void conn_close(conn_t *c) {
    if (c->state == S_CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    if (c->pstate != P_NONE) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->pfd, NULL);
        close(c->pfd);
        c->pstate = P_NONE;
    }
    c->state = S_CLOSED;
    mark_done(c);
}

/* The epoll data of a connection's sockets: its index << 1 | 1 on the POST side. */
static epoll_data_t event_data(conn_t *c, int post) {
    return (epoll_data_t){.u64 = ((uint64_t)(c - conns) << 1) | post};
}

static void start_connect(conn_t *c) {
    c->fd = tcp_connect(event_data(c, 0));
    c->state = S_CONNECTING;
}

/* The request of this connection: the stream, or the next poll. */
static int send_request(conn_t *c) {
    char req[512];
    int n;
    if (mode == M_SSE)
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n",
                     path);
    else if (mode == M_EIO && c->sid[0])
        n = snprintf(req, sizeof req, "GET %s&sid=%s HTTP/1.1\r\nHost: localhost\r\n\r\n", path, c->sid);
    else if (mode == M_POLL && c->have_since)
        n = snprintf(req, sizeof req, "GET %s%csince=%llu HTTP/1.1\r\nHost: localhost\r\n\r\n",
                     path, strchr(path, '?') ? '&' : '?', (unsigned long long)c->since);
    else
        n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: localhost\r\n\r\n", path);
    if (write(c->fd, req, n) != n) return -1;
    requests++;
    c->state = S_HEAD;
    c->head_len = 0;
    if (mode == M_POLL) mark_ready(c);  /* held by the gateway from now on */
    return 0;
}

/* A connect finished: wait for input (and send the request, on the GET side). */
static int on_connected(conn_t *c, int post) {
    int fd = post ? c->pfd : c->fd;
    if (connect_result(fd) < 0) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data = event_data(c, post)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, fd, &ev);
    if (!post) return send_request(c);
    c->pstate = P_IDLE;
    return 0;
}

/* -- Server-Sent Events ------------------------------------------------------------------- */

/* One line of the stream (without its LF; the first LINE_KEEP bytes of a longer one). */
static void sse_line(conn_t *c, const char *s, size_t n, int64_t t) {
    if (n && s[n - 1] == '\r') n--;
    if (n == 0) {  /* the end of an event */
        if (c->ev_data) {
            if (c->ev_gap) gap_notices++;
            else if (c->ev_binary) on_message(c, c->ev_prefix, c->ev_prefix_len, t);
            else unparsed++;
        }
        c->ev_binary = c->ev_gap = c->ev_data = 0;
        return;
    }
    if (n >= 5 && !memcmp(s, "data:", 5)) {
        s += 5; n -= 5;
        if (n && *s == ' ') { s++; n--; }
        if (!c->ev_data) {  /* the first data line holds the prefix */
            c->ev_prefix_len = n < B64_PREFIX ? n : B64_PREFIX;
            memcpy(c->ev_prefix, s, c->ev_prefix_len);
            c->ev_data = 1;
        }
    } else if (n >= 6 && !memcmp(s, "event:", 6)) {
        s += 6; n -= 6;
        if (n && *s == ' ') { s++; n--; }
        c->ev_binary = n == 6 && !memcmp(s, "binary", 6);
        c->ev_gap = n == 3 && !memcmp(s, "gap", 3);
    }  /* id:, retry:, comments: nothing to do */
}

static void sse_feed(conn_t *c, const char *p, size_t n, int64_t t) {
    while (n > 0) {
        const char *nl = memchr(p, '\n', n);
        size_t k = nl ? (size_t)(nl - p) : n;
        if (nl && c->line_len == 0) {
            sse_line(c, p, k, t);  /* a whole line in the buffer: no copy */
        } else {
            size_t room = LINE_KEEP - c->line_len;
            size_t m = k < room ? k : room;
            memcpy(c->line + c->line_len, p, m);
            c->line_len += m;
            if (!nl) return;
            sse_line(c, c->line, c->line_len, t);
            c->line_len = 0;
        }
        p += k + 1;
        n -= k + 1;
    }
}

/* -- long-polling ------------------------------------------------------------------------- */

/* A poll's answer: count its messages, remember the last id, ask again. */
static void poll_answer(conn_t *c, int64_t t) {
    const char *b = c->body, *end = c->body + c->body_len;
    uint64_t last = 0;
    int named = 0;
    while (b < end) {
        const char *o = memmem(b, end - b, "{\"", 2);
        if (!o) break;
        o += 2;
        if (end - o > 5 && !memcmp(o, "id\":", 4)) {
            uint64_t id = strtoull(o + 4, NULL, 10);
            const char *d = memmem(o, end - o, "\"data\":\"", 8);
            if (!d) { unparsed++; break; }
            d += 8;
            const char *q = memchr(d, '"', end - d);
            if (!q) { unparsed++; break; }
            on_message(c, d, q - d, t);
            if (id > last) last = id;
            named = 1;
            b = q + 1;
        } else if (end - o > 6 && !memcmp(o, "gap\":[", 6)) {
            gap_notices++;
            const char *comma = memchr(o, ',', end - o);
            if (comma) {
                uint64_t gap_last = strtoull(comma + 1, NULL, 10);
                if (gap_last > last) last = gap_last;
                named = 1;
            }
            b = o + 6;
        } else {
            unparsed++;
            b = o;
        }
    }
    if (named) { c->since = last; c->have_since = 1; }
    else if (!c->have_since && c->header_last_id) { c->since = c->header_last_id; c->have_since = 1; }
}

/* Append what fits of p[0..n) to a response head being read (buf: size bytes, *len of them
   used, NUL-terminated); returns the end of the head (its "\r\n\r\n") once it is complete,
   and in *used how many bytes of p belong to it, or NULL when more is needed. */
static char *head_add(char *buf, size_t size, uint32_t *len, const char *p, size_t n, size_t *used) {
    size_t k = size - 1 - *len;
    if (k > n) k = n;
    memcpy(buf + *len, p, k);
    size_t old = *len;
    *len += k;
    buf[*len] = 0;
    char *hend = strstr(buf, "\r\n\r\n");
    if (hend) *used = (size_t)(hend + 4 - buf) - old;
    return hend;
}

/* Whether a response head is "HTTP/1.1 200"; if not, an HTTP error, printed. */
static int status_ok(const char *head, const char *what) {
    if (strncmp(head, "HTTP/1.1 200", 12) == 0) return 1;
    http_errors++;
    fprintf(stderr, "httpclient: %s%.120s\n", what, head);
    return 0;
}

/* The head of a response is in c->head (ends at hend): returns the body length, -1 if bad. */
static int64_t parse_head(conn_t *c, const char *hend) {
    if (!status_ok(c->head, "")) return -1;
    int64_t length = -1;
    c->keep_alive = 1;
    c->header_last_id = 0;
    for (const char *l = strstr(c->head, "\r\n"); l && l < hend; l = strstr(l + 2, "\r\n")) {
        const char *v = l + 2;
        if (!strncasecmp(v, "Content-Length:", 15)) length = strtoll(v + 15, NULL, 10);
        else if (!strncasecmp(v, "Connection:", 11)) c->keep_alive = !strncasecmp(v + 11, " keep-alive", 11);
        else if (!strncasecmp(v, "X-Zmqws-Last-Id:", 16)) c->header_last_id = strtoull(v + 16, NULL, 10);
    }
    return length;
}

/* -- Engine.IO long-polling --------------------------------------------------------------- */

/* POST what the session has to say ("40", pongs) when its POST connection is free. */
static void post_flush(conn_t *c) {
    if (!c->need_connect && !c->pongs) return;
    if (c->pstate == P_NONE) {
        c->pfd = tcp_connect(event_data(c, 1));
        c->pstate = P_CONNECTING;
        return;  /* on_connected() makes it P_IDLE; then again */
    }
    if (c->pstate != P_IDLE) return;
    char body[256];
    int n = 0;
    if (c->need_connect) n += snprintf(body + n, sizeof body - n, "40");
    for (; c->pongs > 0 && n < (int)sizeof body - 2; c->pongs--)
        n += snprintf(body + n, sizeof body - n, n ? "\x1e" "3" : "3");
    c->need_connect = 0;
    c->pongs = 0;
    char req[512];
    int m = snprintf(req, sizeof req, "POST %s&sid=%s HTTP/1.1\r\nHost: localhost\r\n"
                     "Content-Type: text/plain;charset=UTF-8\r\nContent-Length: %d\r\n\r\n%.*s",
                     path, c->sid, n, n, body);
    if (write(c->pfd, req, m) != m) { error_count++; return; }
    posts++;
    c->pstate = P_WAIT;
    c->phead_len = 0;
    c->pbody_left = -1;
}

/* The answers to the POSTs ("ok"): read, checked for 200, then the next POST if any. */
static void post_feed(conn_t *c, const char *p, size_t n) {
    while (n > 0 && c->pstate == P_WAIT) {
        if (c->pbody_left < 0) {
            size_t used;
            char *hend = head_add(c->phead, sizeof c->phead, &c->phead_len, p, n, &used);
            if (!hend) {
                if (c->phead_len >= sizeof c->phead - 1) { error_count++; c->pstate = P_IDLE; }
                return;
            }
            status_ok(c->phead, "POST: ");
            const char *cl = strcasestr(c->phead, "\r\nContent-Length:");
            c->pbody_left = cl && cl < hend ? strtoll(cl + 17, NULL, 10) : 0;
            p += used; n -= used;
        }
        size_t k = (uint64_t)c->pbody_left < n ? (size_t)c->pbody_left : n;
        c->pbody_left -= k; p += k; n -= k;
        if (c->pbody_left == 0) {
            c->pstate = P_IDLE;
            if (strcasestr(c->phead, "\r\nConnection: close")) {
                epoll_ctl(epfd, EPOLL_CTL_DEL, c->pfd, NULL);
                close(c->pfd);
                c->pstate = P_NONE;
            }
            post_flush(c);
        }
    }
}

/* A GET's answer: Engine.IO packets separated by 0x1e (Engine.IO v4 "payload"). */
static void eio_answer(conn_t *c, int64_t t) {
    const char *b = c->body, *end = c->body + c->body_len;
    while (b < end) {
        const char *e = memchr(b, 0x1e, end - b);
        if (!e) e = end;
        size_t n = e - b;
        if (n >= 1 && b[0] == 'b') {  /* a binary packet: the attachment of the last "45" */
            if (c->attachment) on_message(c, b + 1, n - 1, t);
            else unparsed++;
            c->attachment = 0;
        } else if (n >= 2 && b[0] == '4') {  /* MESSAGE: a Socket.IO packet */
            if (b[1] == '5') c->attachment = 1;  /* BINARY_EVENT, one attachment */
            else if (b[1] == '0') mark_ready(c);  /* the CONNECT answer */
            else if (b[1] == '4') { http_errors++; fprintf(stderr, "httpclient: %.*s\n", (int)n, b); }
            else unparsed++;
        } else if (n >= 1 && b[0] == '2') {  /* ping: pong */
            c->pongs++;
            post_flush(c);
        } else if (n >= 1 && b[0] == '0') {  /* open: the sid, then CONNECT to / */
            const char *sid = memmem(b, n, "\"sid\":\"", 7);
            const char *q = sid ? memchr(sid + 7, '"', e - sid - 7) : NULL;
            if (!q || q - sid - 7 >= (int)sizeof c->sid) { http_errors++; break; }
            memcpy(c->sid, sid + 7, q - sid - 7);
            c->sid[q - sid - 7] = 0;
            c->need_connect = 1;
            post_flush(c);
        } else if (n >= 1 && b[0] == '1') {  /* close */
            eof_count++;
        }  /* "6" noop */
        b = e + 1;
    }
}

/* The answer is complete: take it, then the next poll (on a new connection if this one closes). */
static int poll_done(conn_t *c, int64_t t) {
    if (mode == M_EIO) eio_answer(c, t);
    else poll_answer(c, t);
    if (c->done) { c->state = S_DONE; return 0; }
    if (!c->keep_alive) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        reconnects++;
        start_connect(c);
        return 0;
    }
    return send_request(c);
}

/* Bytes of a poll connection: the head, then Content-Length bytes of body. */
static int poll_feed(conn_t *c, const char *p, size_t n, int64_t t) {
    while (n > 0) {
        if (c->state == S_HEAD) {
            size_t used;
            char *hend = head_add(c->head, HEAD_MAX, &c->head_len, p, n, &used);
            if (!hend) return c->head_len >= HEAD_MAX - 1 ? -1 : 0;
            int64_t length = parse_head(c, hend);
            if (length < 0) return -1;
            p += used; n -= used;
            c->body_want = (uint64_t)length;
            c->body_len = 0;
            if (c->body_cap < c->body_want) {
                c->body = realloc(c->body, c->body_want);
                if (!c->body) die("realloc");
                c->body_cap = c->body_want;
            }
            c->state = S_BODY;
        }
        if (c->state == S_BODY) {
            size_t k = c->body_want - c->body_len;
            if (k > n) k = n;
            memcpy(c->body + c->body_len, p, k);
            c->body_len += k; p += k; n -= k;
            if (c->body_len == c->body_want) {
                if (poll_done(c, t) < 0) return -1;
                if (c->state != S_HEAD) return 0;  /* done, or reconnecting */
            }
        } else {
            return 0;  /* a done connection: whatever comes is not counted */
        }
    }
    return 0;
}

/* Input of a connection past its connect, in the counting phase. */
static int on_input(conn_t *c, const char *p, size_t n, int64_t t) {
    if (mode != M_SSE) return poll_feed(c, p, n, t);
    if (c->state == S_STREAM) { sse_feed(c, p, n, t); return 0; }
    /* the stream's head */
    size_t used;
    if (!head_add(c->head, HEAD_MAX, &c->head_len, p, n, &used)) return c->head_len >= HEAD_MAX - 1 ? -1 : 0;
    if (!status_ok(c->head, "")) return -1;
    c->state = S_STREAM;
    mark_ready(c);
    if (n > used) sse_feed(c, p + used, n - used, t);
    return 0;
}

/* One epoll event (data: connection index << 1 | POST side); 1 when messages came, -1 on an
   error (the connection is closed then). */
static int on_event(epoll_data_t data, int64_t t) {
    static char buf[READ_SIZE];
    conn_t *c = &conns[data.u64 >> 1];
    int post = data.u64 & 1;
    if (c->state == S_CLOSED) return 0;
    if (post) {
        if (c->pstate == P_CONNECTING) {
            if (on_connected(c, 1) < 0) { conn_close(c); return -1; }
            post_flush(c);
            return 0;
        }
        ssize_t r = read(c->pfd, buf, sizeof buf);
        if (r > 0) post_feed(c, buf, r);
        else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {  /* opened again when needed */
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->pfd, NULL);
            close(c->pfd);
            c->pstate = P_NONE;
            post_flush(c);
        }
        return 0;
    }
    if (c->state == S_CONNECTING) {
        if (on_connected(c, 0) < 0) { conn_close(c); return -1; }
        return 0;
    }
    ssize_t r = read(c->fd, buf, sizeof buf);
    if (r > 0) {
        if (counting) wire_bytes += r;
        uint64_t before = c->received;
        if (on_input(c, buf, r, t) < 0) { conn_close(c); return -1; }
        return c->received != before;
    }
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (r < 0 || !counting) { conn_close(c); return -1; }  /* an error, or a close before READY */
    if (c->done) { conn_close(c); return 0; }  /* after its last answer: nothing lost */
    eof_count++;
    if (mode != M_SSE) {  /* the server ended it: poll again on a new connection */
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        reconnects++;
        start_connect(c);
        return 0;
    }
    conn_close(c);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: httpclient --mode sse|poll|eio --port P --conns C --messages N [--host H] "
                    "[--path PATH] [--sample-every K] [--timeout S] [--idle S] [--connect-timeout S] "
                    "[--parallel K]\n");
    exit(2);
}

static int own_option(const char *a, const char *v) {
    if (strcmp(a, "--mode")) return 0;
    mode = !strcmp(v, "sse") ? M_SSE : !strcmp(v, "poll") ? M_POLL : !strcmp(v, "eio") ? M_EIO : -2;
    return 1;
}

/* Phase 1: a failure is fatal. */
static void connect_event(epoll_data_t data, int64_t t) {
    if (on_event(data, t) < 0) die("connect/request/response");
}

int main(int argc, char **argv) {
    parse_options(argc, argv, own_option);
    if (!port || nconns <= 0 || mode < 0) usage();
    if (!path) path = mode == M_SSE ? "/events" : mode == M_POLL ? "/poll" : "/socket.io/?EIO=4&transport=polling";
    setup();
    /* Phase 1: every connection ready (SSE: its head read; poll: its first request sent;
       eio: its CONNECT answer read). */
    connect_phase(start_connect, connect_event, "ready");
    counting = 1;
    count_phase(on_event);
    printf("{\"mode\": \"%s\", ", mode == M_SSE ? "sse" : mode == M_POLL ? "poll" : "eio");
    report_totals();
    printf(", \"gap_notices\": %llu, \"unparsed\": %llu, \"requests\": %llu, \"posts\": %llu, "
           "\"reconnects\": %llu, \"http_errors\": %llu",
           (unsigned long long)gap_notices, (unsigned long long)unparsed, (unsigned long long)requests,
           (unsigned long long)posts, (unsigned long long)reconnects, (unsigned long long)http_errors);
    report_run();
    printf(", \"wire_bytes\": %llu}\n", (unsigned long long)wire_bytes);
    fflush(stdout);
    return 0;
}
