/*
 * loadcommon.h: what the benchmarks' two C load clients share, loadclient.c (WebSocket) and
 * httpclient.c (SSE, long-polling, Engine.IO long-polling): the common options, the set-up,
 * non-blocking connects into one epoll set, the sequence and latency checks of the payload's
 * first 16 bytes, the two phases (connect everyone and print READY; count until done, idle or
 * timed out) and the fields of the JSON report that both print.
 *
 * Static functions only, for one translation unit.  Include it after defining CLIENT_NAME
 * (the prefix of error messages), the state S_CLOSED and conn_t, which must have the fields
 *
 *     int fd, state, sampled, done;
 *     uint64_t received, next_seq, gaps, out_of_order;
 *
 * and define usage() (the header declares it).
 */
#ifndef LOADCOMMON_H
#define LOADCOMMON_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_SIZE (256 * 1024)

#define H_FINE 100000          /* µs buckets below 100 ms */
#define H_COARSE 600000        /* then ms buckets up to 600 s */

static void usage(void);       /* the client's */

/* options */
static const char *host = "127.0.0.1";
static int port;
static const char *path;       /* NULL: the client's default */
static int nconns;
static uint64_t expected;
static int sample_every = 10, parallel = 200, pause_us;
static double timeout = 30, idle = 3, connect_timeout = 30;

static conn_t *conns;
static int epfd;

/* what the report counts */
static int ready_count, pending, done_count, eof_count, error_count, closed_by_server;
static uint64_t close_code_counts[5000];
static uint64_t *hist;
static uint64_t lat_samples, lat_max_ns;
static uint64_t wire_bytes;    /* every byte read while counting */
static double connect_s;
static int64_t ready_ns, first_ns = -1, last_ns = -1;
static double cpu_first, cpu_at_last, cpu_total;
static int timed_out, open_at_end;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void die(const char *msg) {
    fprintf(stderr, CLIENT_NAME ": %s: %s\n", msg, strerror(errno));
    printf("FAILED %s\n", msg);
    fflush(stdout);
    exit(1);
}

static uint64_t le64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;  /* x86/ARM little-endian */
}

/* The options of both clients, then the client's own (option() returns 0 for an unknown one). */
static void parse_options(int argc, char **argv, int (*option)(const char *a, const char *v)) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--host")) host = v;
        else if (!strcmp(a, "--port")) port = atoi(v);
        else if (!strcmp(a, "--conns")) nconns = atoi(v);
        else if (!strcmp(a, "--messages")) expected = strtoull(v, NULL, 10);
        else if (!strcmp(a, "--path")) path = v;
        else if (!strcmp(a, "--sample-every")) sample_every = atoi(v);
        else if (!strcmp(a, "--timeout")) timeout = atof(v);
        else if (!strcmp(a, "--idle")) idle = atof(v);
        else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
        else if (!strcmp(a, "--parallel")) parallel = atoi(v);
        else if (!option(a, v)) usage();
    }
}

/* No SIGPIPE, as many descriptors as allowed, the connections, the histogram, the epoll set. */
static void setup(void) {
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    conns = calloc(nconns, sizeof *conns);
    hist = calloc(H_FINE + H_COARSE, sizeof *hist);
    epfd = epoll_create1(0);
    if (!conns || !hist || epfd < 0) die("setup");
    for (int i = 0; i < nconns; i++) conns[i].sampled = sample_every > 0 && i % sample_every == 0;
}

/* A non-blocking connect to host:port, in the epoll set (for EPOLLOUT) with data; its fd. */
static int tcp_connect(epoll_data_t data) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0) die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_in sa = {0};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    inet_pton(AF_INET, host, &sa.sin_addr);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0 && errno != EINPROGRESS) die("connect");
    struct epoll_event ev = {.events = EPOLLOUT, .data = data};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
    return fd;
}

/* The outcome of a non-blocking connect that became writable: 0, or -1 with errno set. */
static int connect_result(int fd) {
    int err = 0;
    socklen_t l = sizeof err;
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &l);
    if (err) { errno = err; return -1; }
    return 0;
}

static void mark_done(conn_t *c) {
    if (!c->done) { c->done = 1; done_count++; }
}

/* Done once the connection has seen sequence number --messages - 1. */
static void check_done(conn_t *c) {
    if (expected && c->next_seq >= expected) mark_done(c);
}

/* A data message's send time ts and sequence number seq, read at t: seq against *next (a jump
   counts the skipped messages as gaps), and its latency if the connection is sampled
   (1 µs buckets below 100 ms, 1 ms buckets above). */
static void check_message(conn_t *c, uint64_t *next, uint64_t ts, uint64_t seq, int64_t t) {
    if (seq == *next) (*next)++;
    else if (seq > *next) { c->gaps += seq - *next; *next = seq + 1; }
    else c->out_of_order++;
    if (!c->sampled) return;
    int64_t d = t - (int64_t)ts;
    if (d < 0) d = 0;
    uint64_t us = (uint64_t)d / 1000;
    uint64_t idx = us < H_FINE ? us : H_FINE + (us - H_FINE) / 1000;
    if (idx >= H_FINE + H_COARSE) idx = H_FINE + H_COARSE - 1;
    hist[idx]++;
    lat_samples++;
    if ((uint64_t)d > lat_max_ns) lat_max_ns = d;
}

/* Phase 1: start every connection, at most --parallel at a time (on_event() counts a ready one
   in ready_count and takes it from pending), until all are ready; then "READY <n> <seconds>". */
static void connect_phase(void (*start)(conn_t *c), void (*on_event)(epoll_data_t data, int64_t t),
                          const char *ready_word) {
    int64_t t0 = now_ns();
    int started = 0;
    struct epoll_event evs[1024];
    while (ready_count < nconns) {
        while (started < nconns && pending < parallel) { start(&conns[started++]); pending++; }
        if ((now_ns() - t0) / 1e9 > connect_timeout) {
            errno = ETIMEDOUT;
            fprintf(stderr, CLIENT_NAME ": %d of %d connections %s\n", ready_count, nconns, ready_word);
            die("connect timeout");
        }
        int n = epoll_wait(epfd, evs, 1024, 100);
        int64_t t = now_ns();
        for (int i = 0; i < n; i++) on_event(evs[i].data, t);
    }
    connect_s = (now_ns() - t0) / 1e9;
    printf("READY %d %.3f\n", ready_count, connect_s);
    fflush(stdout);
}

/* Phase 2: until every connection is done, nothing came for --idle seconds after the first
   message, or --timeout seconds passed.  on_event() returns 1 when messages came, -1 on an
   error (counted). */
static void count_phase(int (*on_event)(epoll_data_t data, int64_t t)) {
    struct epoll_event evs[1024];
    ready_ns = now_ns();
    while (done_count < nconns) {
        int n = epoll_wait(epfd, evs, 1024, 50);
        int64_t t = now_ns();
        int got = 0;
        for (int i = 0; i < n; i++) {
            int r = on_event(evs[i].data, t);
            if (r < 0) error_count++;
            else if (r > 0) got = 1;
        }
        if (got) {
            if (first_ns < 0) { first_ns = t; cpu_first = cpu_seconds(); }
            last_ns = t;
            cpu_at_last = cpu_seconds();
        }
        if ((t - ready_ns) / 1e9 > timeout) { timed_out = 1; break; }
        if (first_ns >= 0 && (t - last_ns) / 1e9 > idle) break;
        if (pause_us && n > 0) {
            /* Let data pile up so that each read() takes many frames: fewer system calls
               and wake-ups per message when a server writes each message separately. */
            int64_t left = (int64_t)pause_us * 1000 - (now_ns() - t);
            if (left > 0) {
                struct timespec ts = {0, left};
                nanosleep(&ts, NULL);
            }
        }
    }
    cpu_total = cpu_seconds();
}

static double hist_pct(double q) {
    if (!lat_samples) return -1;
    uint64_t target = (uint64_t)(q * lat_samples);
    if (target >= lat_samples) target = lat_samples - 1;
    uint64_t acc = 0;
    for (uint64_t i = 0; i < H_FINE + H_COARSE; i++) {
        acc += hist[i];
        if (acc > target) return i < H_FINE ? i / 1000.0 : (double)(H_FINE + (i - H_FINE) * 1000) / 1000.0;
    }
    return lat_max_ns / 1e6;
}

/* The report's fields from "conns" to "out_of_order" (the totals over the connections). */
static void report_totals(void) {
    uint64_t total = 0, gaps = 0, ooo = 0, minr = UINT64_MAX, maxr = 0;
    int complete = 0;
    open_at_end = 0;
    for (int i = 0; i < nconns; i++) {
        conn_t *c = &conns[i];
        total += c->received;
        gaps += c->gaps;
        ooo += c->out_of_order;
        if (c->received < minr) minr = c->received;
        if (c->received > maxr) maxr = c->received;
        if (expected && c->next_seq >= expected) complete++;
        if (c->state != S_CLOSED) open_at_end++;
    }
    printf("\"conns\": %d, \"upgraded\": %d, \"connect_s\": %.3f, \"messages_expected\": %llu, "
           "\"received\": %llu, \"min_per_conn\": %llu, \"max_per_conn\": %llu, \"complete_conns\": %d, "
           "\"gaps\": %llu, \"out_of_order\": %llu",
           nconns, ready_count, connect_s, (unsigned long long)expected, (unsigned long long)total,
           (unsigned long long)(minr == UINT64_MAX ? 0 : minr), (unsigned long long)maxr, complete,
           (unsigned long long)gaps, (unsigned long long)ooo);
}

/* The report's fields from "closed_by_server" to "cpu_total_s" (after report_totals()). */
static void report_run(void) {
    printf(", \"closed_by_server\": %d, \"close_codes\": {", closed_by_server);
    int first = 1;
    for (int i = 0; i < 5000; i++)
        if (close_code_counts[i]) {
            printf("%s\"%d\": %llu", first ? "" : ", ", i, (unsigned long long)close_code_counts[i]);
            first = 0;
        }
    printf("}, \"eof\": %d, \"errors\": %d, \"open_at_end\": %d, \"timed_out\": %s, "
           "\"first_s\": %.6f, \"last_s\": %.6f, \"window_s\": %.6f, "
           "\"first_abs_s\": %.6f, \"last_abs_s\": %.6f, "
           "\"lat_samples\": %llu, \"lat_p50_ms\": %.3f, \"lat_p99_ms\": %.3f, \"lat_max_ms\": %.3f, "
           "\"cpu_window_s\": %.3f, \"cpu_total_s\": %.3f",
           eof_count, error_count, open_at_end, timed_out ? "true" : "false",
           first_ns >= 0 ? (first_ns - ready_ns) / 1e9 : -1.0, last_ns >= 0 ? (last_ns - ready_ns) / 1e9 : -1.0,
           first_ns >= 0 ? (last_ns - first_ns) / 1e9 : 0, first_ns >= 0 ? first_ns / 1e9 : -1.0,
           last_ns >= 0 ? last_ns / 1e9 : -1.0,
           (unsigned long long)lat_samples, hist_pct(0.50), hist_pct(0.99), lat_max_ns / 1e6,
           first_ns >= 0 ? cpu_at_last - cpu_first : 0.0, cpu_total);
}

#endif
