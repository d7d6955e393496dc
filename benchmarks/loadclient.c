/*
 * loadclient: the fan-out benchmark's WebSocket load client.
 *
 * Opens C plain ws:// connections to one server, waits until every one is
 * upgraded (101), prints "READY <open> <connect-seconds>" on stdout, then
 * counts the messages the server pushes on each connection until each has
 * received the expected number, or nothing arrived for --idle seconds after
 * the first message, or --timeout seconds passed since READY.  Then it prints
 * one JSON line with totals and exits.
 *
 * One thread, epoll, non-blocking sockets, one read() of up to 256 KiB per
 * ready socket per epoll round.  Server-to-client frames are unmasked
 * (RFC 6455 §5.1): the client parses 2/4/10-byte headers, and looks only at
 * the first 16 payload bytes of each data message, which the benchmark's
 * publisher fills with:
 *
 *     bytes 0..7   send time, CLOCK_MONOTONIC nanoseconds, little-endian
 *     bytes 8..15  sequence number 0..N-1, little-endian
 *
 * Every connection checks that sequence numbers grow by one (a jump counts
 * the skipped messages as lost); every --sample-every'th connection also
 * records the latency of each message (time of the read() that returned it
 * minus the send time) in a histogram: 1 µs buckets below 100 ms, 1 ms
 * buckets above.  Pings are answered with pongs, so keepalive timeouts of the
 * servers under test never fire.  CPU time (getrusage) is reported for the
 * window between the first and the last message, so a reader can tell
 * whether the client was saturated.
 *
 * --deflate 1 offers permessage-deflate (RFC 7692) in the upgrade
 * ("permessage-deflate; client_max_window_bits") and accepts compressed
 * (RSV1) messages: each connection has its own raw zlib inflater, fed the
 * compressed payload as it arrives, reset before each message when the server
 * answered server_no_context_takeover and kept otherwise (context takeover,
 * which websockets uses by default); the first 16 inflated bytes are checked
 * as above.  --deflate 2 negotiates the same but inflates nothing: it counts
 * the compressed messages (on their last frame) and takes each for the next
 * in sequence, so there are no gap, order or latency checks; for full-rate
 * runs, where inflating would make the client the bottleneck.  Every byte read after READY is counted (wire_bytes), as are the
 * payload bytes of data frames (frame_payload_bytes) and the inflated bytes.
 *
 * --path-template gives each connection its own request path: "%i" in it is
 * replaced by the connection's index (0..C-1) and "%m" by the index modulo
 * --path-mod, e.g. "/?topic=u%i.&topic=s%m." (benchmarks/topics.py).
 * --seq-streams 2 is for connections that get two topics, each numbered by
 * the publisher on its own: the top byte of the sequence number (0 or 1)
 * names the stream, and each stream's order and gaps are checked separately.
 *
 * Build: gcc -O2 -o loadclient loadclient.c -lz   (benchmarks/fanout.py does it)
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <zlib.h>

enum { S_CONNECTING = 0, S_UPGRADING, S_OPEN, S_CLOSED };

#define HB_MAX (14 + 125)      /* largest header + the prefix we look at */
#define DATA_PREFIX 16         /* timestamp + sequence */
#define RESP_MAX 2048

typedef struct {
    int fd;
    int state;
    int sampled;
    int done;
    uint64_t received;          /* data messages */
    uint64_t next_seq;
    uint64_t next_seq1;         /* --seq-streams 2: the second stream's */
    uint64_t gaps;              /* messages skipped in the sequence */
    uint64_t out_of_order;      /* sequence numbers lower than expected */
    uint64_t skip;              /* payload bytes still to skip */
    uint32_t hb_len;
    uint8_t hb[HB_MAX];
    char *resp;                 /* HTTP response, while upgrading */
    uint32_t resp_len;
    int close_code;             /* -1: none received */
    /* permessage-deflate */
    int z_ok;                   /* negotiated: the inflater is set up */
    int z_reset;                /* server_no_context_takeover: fresh inflate per message */
    int z_msg;                  /* inside a compressed message */
    int z_pending;              /* the current frame's payload goes to the inflater */
    int z_fin;                  /* the current compressed frame is the message's last */
    int z_opcode;
    uint32_t z_out;             /* inflated bytes of this message so far */
    uint8_t z_prefix[DATA_PREFIX];
    z_stream zs;
} conn_t;

#define CLIENT_NAME "loadclient"
#include "loadcommon.h"

static int deflate_mode;
static int seq_streams = 1;
static uint64_t frame_payload_bytes, inflated_bytes, inflate_errors;
static int deflate_conns, deflate_reset_conns;
static uint8_t zscratch[65536];

/* Bytes needed to hold the header and the payload prefix we inspect. */
static size_t hdr_need(const uint8_t *b, size_t have) {
    if (have < 2) return 2;
    size_t h = 2;
    uint8_t l7 = b[1] & 0x7f;
    if (l7 == 126) h = 4;
    else if (l7 == 127) h = 10;
    if (b[1] & 0x80) h += 4;
    if (have < h) return h;
    uint64_t len = l7;
    if (l7 == 126) len = ((uint64_t)b[2] << 8) | b[3];
    else if (l7 == 127) {
        len = 0;
        for (int i = 2; i < 10; i++) len = (len << 8) | b[i];
    }
    size_t prefix = (b[0] & 0x08) ? 125 : DATA_PREFIX;  /* control frames: whole payload */
    if (deflate_mode && !(b[0] & 0x08) && ((b[0] & 0x40) || (b[0] & 0x0f) == 0))
        prefix = 0;  /* possibly compressed: the payload goes through the inflater */
    return h + (len < prefix ? len : prefix);
}

static void conn_close(conn_t *c) {
    if (c->state == S_CLOSED) return;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->state = S_CLOSED;
    mark_done(c);
}

static void send_masked(conn_t *c, int opcode, const uint8_t *payload, size_t len) {
    uint8_t f[6 + 125];
    static const uint8_t mask[4] = {0x12, 0x34, 0x56, 0x78};
    if (len > 125) len = 125;
    f[0] = 0x80 | opcode;
    f[1] = 0x80 | (uint8_t)len;
    memcpy(f + 2, mask, 4);
    for (size_t i = 0; i < len; i++) f[6 + i] = payload[i] ^ mask[i & 3];
    ssize_t r = write(c->fd, f, 6 + len);
    (void)r;  /* a tiny control frame; if the buffer is full, so be it */
}

/* A whole data message; p holds (at least) its first min(len, 16) bytes. */
static void on_message(conn_t *c, int opcode, const uint8_t *p, uint64_t len, int64_t t) {
    c->received++;
    if (opcode != 0 && len >= DATA_PREFIX) {
        uint64_t ts = le64(p), seq = le64(p + 8);
        uint64_t *next = &c->next_seq;
        if (seq_streams == 2) {
            if (seq >> 56) next = &c->next_seq1;
            seq &= (1ULL << 56) - 1;
        }
        check_message(c, next, ts, seq, t);
    }
    check_done(c);
}

/* Compressed payload bytes of the current frame into the connection's inflater. */
static void z_feed(conn_t *c, const uint8_t *p, size_t n) {
    z_stream *z = &c->zs;
    z->next_in = (uint8_t *)p;
    z->avail_in = n;
    do {
        z->next_out = zscratch;
        z->avail_out = sizeof zscratch;
        int rc = inflate(z, Z_SYNC_FLUSH);
        size_t out = sizeof zscratch - z->avail_out;
        if (c->z_out < DATA_PREFIX) {
            size_t k = DATA_PREFIX - c->z_out < out ? DATA_PREFIX - c->z_out : out;
            memcpy(c->z_prefix + c->z_out, zscratch, k);
        }
        c->z_out += out;
        inflated_bytes += out;
        if (rc != Z_OK && rc != Z_BUF_ERROR && rc != Z_STREAM_END) {
            inflate_errors++;
            inflateReset(z);
            return;
        }
        if (rc == Z_BUF_ERROR || rc == Z_STREAM_END) break;
    } while (z->avail_in > 0 || z->avail_out == 0);
}

/* The current compressed frame's payload is all in. */
static void z_end(conn_t *c, int64_t t) {
    static const uint8_t tail[4] = {0x00, 0x00, 0xff, 0xff};  /* RFC 7692 §7.2.2 */
    c->z_pending = 0;
    if (!c->z_fin) return;
    z_feed(c, tail, 4);
    c->z_msg = 0;
    on_message(c, c->z_opcode, c->z_prefix, c->z_out, t);
}

/* One whole header plus prefix at b; returns the frame's total length. */
static uint64_t on_frame(conn_t *c, const uint8_t *b, int64_t t) {
    size_t h = 2;
    uint8_t l7 = b[1] & 0x7f;
    uint64_t len = l7;
    if (l7 == 126) { h = 4; len = ((uint64_t)b[2] << 8) | b[3]; }
    else if (l7 == 127) { h = 10; len = 0; for (int i = 2; i < 10; i++) len = (len << 8) | b[i]; }
    if (b[1] & 0x80) h += 4;  /* a masked server frame is a protocol error; tolerate it */
    const uint8_t *p = b + h;
    int opcode = b[0] & 0x0f;
    int fin = b[0] & 0x80;
    if (opcode <= 2) frame_payload_bytes += len;
    if (deflate_mode && c->z_ok && opcode <= 2 && ((b[0] & 0x40) || (opcode == 0 && c->z_msg))) {
        if (opcode != 0) {
            c->z_msg = 1;
            c->z_opcode = opcode;
            c->z_out = 0;
            if (c->z_reset) inflateReset(&c->zs);
        }
        c->z_fin = fin != 0;
        if (deflate_mode == 2) {  /* count only */
            if (fin) { c->z_msg = 0; c->next_seq++; on_message(c, 0, p, 0, t); }
            return h + len;
        }
        c->z_pending = 1;
        return h + len;  /* feed() hands the payload to z_feed(), then calls z_end() */
    }
    if (opcode == 1 || opcode == 2 || (opcode == 0 && fin)) {
        if (!fin) return h + len;  /* first fragment: count the message on its last one */
        on_message(c, opcode, p, len, t);
    } else if (opcode == 9) {
        send_masked(c, 10, p, len);
    } else if (opcode == 8) {
        int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
        c->close_code = code;
        closed_by_server++;
        if (code >= 0 && code < 5000) close_code_counts[code]++;
        send_masked(c, 8, p, len >= 2 ? 2 : 0);
        conn_close(c);
    }
    return h + len;
}

static void feed(conn_t *c, const uint8_t *p, size_t n, int64_t t) {
    while (n > 0 && c->state == S_OPEN) {
        if (c->skip) {
            size_t k = c->skip < n ? (size_t)c->skip : n;
            if (c->z_pending) z_feed(c, p, k);
            c->skip -= k; p += k; n -= k;
            if (!c->skip && c->z_pending) z_end(c, t);
            continue;
        }
        if (c->hb_len == 0) {
            size_t need = hdr_need(p, n);
            if (n >= need) {
                uint64_t total = on_frame(c, p, t);
                if (c->z_pending) {  /* need is the header: the payload follows */
                    p += need; n -= need;
                    c->skip = total - need;
                    if (!c->skip) z_end(c, t);
                } else if (total <= n) { p += total; n -= total; }
                else { c->skip = total - n; n = 0; }
                continue;
            }
            memcpy(c->hb, p, n);
            c->hb_len = n;
            return;
        }
        size_t need = hdr_need(c->hb, c->hb_len);
        while (c->hb_len < need && n > 0) {
            size_t k = need - c->hb_len;
            if (k > n) k = n;
            memcpy(c->hb + c->hb_len, p, k);
            c->hb_len += k; p += k; n -= k;
            need = hdr_need(c->hb, c->hb_len);
        }
        if (c->hb_len < need) return;
        uint64_t total = on_frame(c, c->hb, t);
        c->skip = total - c->hb_len;
        c->hb_len = 0;
        if (c->z_pending && !c->skip) z_end(c, t);
    }
}

static const char *path_template = NULL;
static int path_mod = 1;

/* Connection i's request path: --path, or --path-template with "%i" -> i and "%m" -> i % --path-mod. */
static const char *conn_path(int i, char *buf, size_t size) {
    if (!path_template) return path;
    size_t n = 0;
    for (const char *p = path_template; *p && n + 12 < size; p++) {
        if (p[0] == '%' && (p[1] == 'i' || p[1] == 'm')) {
            n += snprintf(buf + n, size - n, "%d", p[1] == 'i' ? i : i % path_mod);
            p++;
        } else {
            buf[n++] = *p;
        }
    }
    buf[n] = 0;
    return buf;
}

static void start_connect(conn_t *c) {
    c->state = S_CONNECTING;
    c->close_code = -1;
    c->fd = tcp_connect((epoll_data_t){.ptr = c});
}

static int on_connecting(conn_t *c) {
    if (connect_result(c->fd) < 0) return -1;
    char req[1024], pbuf[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     "Origin: http://%s:%d\r\n%s\r\n", conn_path((int)(c - conns), pbuf, sizeof pbuf), host, port, host, port,
                     deflate_mode ? "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" : "");
    if (write(c->fd, req, n) != n) return -1;
    c->state = S_UPGRADING;
    c->resp = malloc(RESP_MAX);
    c->resp_len = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

/* Returns 1 when upgraded, 0 when more is needed, -1 on failure. */
static int on_upgrading(conn_t *c, int64_t t) {
    ssize_t r = read(c->fd, c->resp + c->resp_len, RESP_MAX - 1 - c->resp_len);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return 0;
    if (r <= 0) return -1;
    c->resp_len += r;
    c->resp[c->resp_len] = 0;
    char *end = strstr(c->resp, "\r\n\r\n");
    if (!end) return c->resp_len >= RESP_MAX - 1 ? -1 : 0;
    if (strncmp(c->resp, "HTTP/1.1 101", 12) != 0 ||
        !strcasestr(c->resp, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")) {
        fprintf(stderr, "loadclient: bad upgrade response: %.200s\n", c->resp);
        return -1;
    }
    if (deflate_mode) {
        *end = 0;  /* look at the headers only */
        const char *ext = strcasestr(c->resp, "\r\nSec-WebSocket-Extensions:");
        if (ext && strcasestr(ext, "permessage-deflate")) {
            const char *eol = strstr(ext + 2, "\r\n");
            const char *nct = strcasestr(ext, "server_no_context_takeover");
            c->z_reset = nct && (!eol || nct < eol);
            if (inflateInit2(&c->zs, -15) != Z_OK) die("inflateInit2");
            c->z_ok = 1;
            deflate_conns++;
            deflate_reset_conns += c->z_reset;
        }
        *end = '\r';
    }
    c->state = S_OPEN;
    size_t head = end + 4 - c->resp;
    if (c->resp_len > head) feed(c, (uint8_t *)c->resp + head, c->resp_len - head, t);
    free(c->resp);
    c->resp = NULL;
    return 1;
}

static void usage(void) {
    fprintf(stderr, "usage: loadclient --port P --conns C --messages N [--host H] [--path /] "
                    "[--path-template T] [--path-mod M] [--seq-streams 1|2] "
                    "[--sample-every K] [--timeout S] [--idle S] [--connect-timeout S] [--parallel K] "
                    "[--pause-us US] [--deflate 0|1]\n");
    exit(2);
}


static int own_option(const char *a, const char *v) {
    if (!strcmp(a, "--path-template")) path_template = v;
    else if (!strcmp(a, "--path-mod")) path_mod = atoi(v);
    else if (!strcmp(a, "--seq-streams")) seq_streams = atoi(v);
    else if (!strcmp(a, "--pause-us")) pause_us = atoi(v);
    else if (!strcmp(a, "--deflate")) deflate_mode = atoi(v);
    else return 0;
    return 1;
}

/* Phase 1: connect, send the upgrade request, read the 101. */
static void connect_event(epoll_data_t data, int64_t t) {
    conn_t *c = data.ptr;
    if (c->state == S_CONNECTING) {
        if (on_connecting(c) < 0) die("connect/upgrade request");
    } else if (c->state == S_UPGRADING) {
        int r = on_upgrading(c, t);
        if (r < 0) die("upgrade");
        if (r > 0) { ready_count++; pending--; }
    } else if (c->state == S_OPEN) {
        uint8_t buf[4096];  /* early frames (a ping): rare */
        ssize_t r = read(c->fd, buf, sizeof buf);
        if (r > 0) feed(c, buf, r, t);
        else if (r == 0 || (errno != EAGAIN && errno != EINTR)) die("early close");
    }
}

/* Phase 2: one read() of an open connection; 1 when messages came, -1 on an error. */
static int count_event(epoll_data_t data, int64_t t) {
    static uint8_t buf[READ_SIZE];
    conn_t *c = data.ptr;
    if (c->state != S_OPEN) return 0;
    ssize_t r = read(c->fd, buf, sizeof buf);
    if (r > 0) {
        wire_bytes += r;
        uint64_t before = c->received;
        feed(c, buf, r, t);
        return c->received != before;
    }
    if (r == 0) {
        eof_count++;
        conn_close(c);
    } else if (errno != EAGAIN && errno != EINTR) {
        conn_close(c);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    parse_options(argc, argv, own_option);
    if (!port || nconns <= 0 || path_mod <= 0 || seq_streams < 1 || seq_streams > 2) usage();
    if (!path) path = "/";
    setup();
    connect_phase(start_connect, connect_event, "upgraded");
    count_phase(count_event);
    printf("{");
    report_totals();
    report_run();
    printf(", \"deflate\": %d, \"deflate_conns\": %d, "
           "\"deflate_no_context_takeover_conns\": %d, \"wire_bytes\": %llu, \"frame_payload_bytes\": %llu, "
           "\"inflated_bytes\": %llu, \"inflate_errors\": %llu}\n",
           deflate_mode, deflate_conns, deflate_reset_conns,
           (unsigned long long)wire_bytes, (unsigned long long)frame_payload_bytes,
           (unsigned long long)inflated_bytes, (unsigned long long)inflate_errors);
    fflush(stdout);
    return 0;
}
