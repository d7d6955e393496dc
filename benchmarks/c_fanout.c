/*
 * c_fanout: a trivial C WebSocket fan-out server, the latency/throughput
 * reference for benchmarks/fanout.py (stack "c").
 *
 * One thread.  A ZeroMQ SUB socket (libzmq, subscribed to everything, same
 * RCVHWM as the other stacks) and an epoll set of raw sockets (the listening
 * socket and the clients), waited on together with zmq_poll().  For every
 * ZeroMQ message it builds one unmasked binary frame and write()s it to every
 * open client: one write() per client per message, no batching, no queueing.
 * A short or refused write is counted (and the rest of that frame dropped for
 * that client) and reported on exit: this is a measuring stick, not a
 * gateway.  The upgrade is answered with the Sec-WebSocket-Accept computed
 * from the client's key (SHA-1 + base64 from libcrypto).  Client frames are
 * read and ignored; EOF closes the connection.
 *
 * Build: gcc -O2 -o c_fanout c_fanout.c -lzmq -lcrypto   (fanout.py does it)
 * Run:   c_fanout --sub tcp://127.0.0.1:5556 --port 8080 [--rcvhwm 100000]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

#define MAXFD 65536
#define REQ_MAX 4096

typedef struct {
    int open;            /* 0: reading the upgrade request, 1: open */
    int len;
    char *req;
} client_t;

static client_t *clients[MAXFD];
static int open_fds[MAXFD];
static int nopen;
static volatile sig_atomic_t stopping;
static unsigned long long short_writes, messages, frames_written;
/* The sweep: time of one message's write() loop over the clients, for its median and p99. */
#define MAX_SWEEPS (1 << 20)
static float sweep_ms[MAX_SWEEPS];
static size_t nsweeps;

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int by_value(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static void report_sweeps(void) {
    if (!nsweeps) return;
    qsort(sweep_ms, nsweeps, sizeof sweep_ms[0], by_value);
    fprintf(stderr, "sweep: %zu sweeps, p50 %.3f ms, p99 %.3f ms, max %.3f ms\n", nsweeps,
            sweep_ms[nsweeps / 2], sweep_ms[nsweeps * 99 / 100], sweep_ms[nsweeps - 1]);
}

static void on_term(int sig) { (void)sig; stopping = 1; }

static void drop(int epfd, int fd) {
    client_t *c = clients[fd];
    if (!c) return;
    if (c->open) {
        for (int i = 0; i < nopen; i++)
            if (open_fds[i] == fd) { open_fds[i] = open_fds[--nopen]; break; }
    }
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(c->req);
    free(c);
    clients[fd] = NULL;
}

static int upgrade(int fd, client_t *c) {
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    char *k = strcasestr(c->req, "\r\nSec-WebSocket-Key:");
    if (!k) return -1;
    k += 20;
    while (*k == ' ' || *k == '\t') k++;
    char *e = strstr(k, "\r\n");
    if (!e || e - k > 64) return -1;
    char buf[128];
    int n = (int)(e - k);
    memcpy(buf, k, n);
    memcpy(buf + n, guid, sizeof guid - 1);
    unsigned char sha[SHA_DIGEST_LENGTH];
    SHA1((unsigned char *)buf, n + sizeof guid - 1, sha);
    unsigned char acc[64];
    EVP_EncodeBlock(acc, sha, SHA_DIGEST_LENGTH);
    char resp[256];
    int rl = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", acc);
    return write(fd, resp, rl) == rl ? 0 : -1;
}

static void on_client(int epfd, int fd) {
    client_t *c = clients[fd];
    char tmp[4096];
    for (;;) {
        ssize_t r = read(fd, tmp, sizeof tmp);
        if (r == 0) { drop(epfd, fd); return; }
        if (r < 0) {
            if (errno == EAGAIN || errno == EINTR) return;
            drop(epfd, fd);
            return;
        }
        if (c->open) continue;  /* client frames (pongs, close) are ignored */
        if (c->len + r >= REQ_MAX) { drop(epfd, fd); return; }
        memcpy(c->req + c->len, tmp, r);
        c->len += r;
        c->req[c->len] = 0;
        if (strstr(c->req, "\r\n\r\n")) {
            if (upgrade(fd, c) < 0) { drop(epfd, fd); return; }
            c->open = 1;
            open_fds[nopen++] = fd;
        }
    }
}

static void on_accept(int epfd, int lfd) {
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
        if (fd < 0) return;
        if (fd >= MAXFD) { close(fd); continue; }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        client_t *c = calloc(1, sizeof *c);
        c->req = malloc(REQ_MAX);
        clients[fd] = c;
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    }
}

static void fan_out(const unsigned char *data, size_t n) {
    static unsigned char frame[16 + (1 << 20)];
    size_t h;
    if (n > (1 << 20)) return;
    frame[0] = 0x82;
    if (n < 126) { frame[1] = (unsigned char)n; h = 2; }
    else if (n < 65536) { frame[1] = 126; frame[2] = n >> 8; frame[3] = n & 0xff; h = 4; }
    else { frame[1] = 127; for (int i = 0; i < 8; i++) frame[2 + i] = (uint64_t)n >> (56 - 8 * i); h = 10; }
    memcpy(frame + h, data, n);
    size_t total = h + n;
    double started = now_ms();
    for (int i = 0; i < nopen; i++) {
        ssize_t w = write(open_fds[i], frame, total);
        if (w != (ssize_t)total) short_writes++;
        else frames_written++;
    }
    if (nopen && nsweeps < MAX_SWEEPS) sweep_ms[nsweeps++] = (float)(now_ms() - started);
    messages++;
}

int main(int argc, char **argv) {
    const char *sub_ep = NULL;
    int port = 0, rcvhwm = 100000;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--sub")) sub_ep = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rcvhwm")) rcvhwm = atoi(argv[i + 1]);
    }
    if (!sub_ep || !port) {
        fprintf(stderr, "usage: c_fanout --sub ENDPOINT --port P [--rcvhwm N]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    void *ctx = zmq_ctx_new();
    void *sub = zmq_socket(ctx, ZMQ_SUB);
    int linger = 0;
    zmq_setsockopt(sub, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(sub, ZMQ_RCVHWM, &rcvhwm, sizeof rcvhwm);
    zmq_setsockopt(sub, ZMQ_SUBSCRIBE, "", 0);
    if (zmq_connect(sub, sub_ep) != 0) { perror("zmq_connect"); return 1; }

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons(port)};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(lfd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(lfd, 4096) < 0) {
        perror("bind/listen");
        return 1;
    }
    int epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);

    zmq_pollitem_t items[2] = {{sub, 0, ZMQ_POLLIN, 0}, {NULL, epfd, ZMQ_POLLIN, 0}};
    struct epoll_event evs[256];
    zmq_msg_t msg;
    zmq_msg_init(&msg);
    while (!stopping) {
        int rc = zmq_poll(items, 2, 1000);
        if (rc < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (items[1].revents) {
            int n = epoll_wait(epfd, evs, 256, 0);
            for (int i = 0; i < n; i++) {
                if (evs[i].data.fd == lfd) on_accept(epfd, lfd);
                else on_client(epfd, evs[i].data.fd);
            }
        }
        if (items[0].revents) {
            while (zmq_msg_recv(&msg, sub, ZMQ_DONTWAIT) >= 0)
                fan_out(zmq_msg_data(&msg), zmq_msg_size(&msg));
        }
    }
    fprintf(stderr, "c_fanout: %llu messages, %llu frames written, %llu short or failed writes\n",
            messages, frames_written, short_writes);
    report_sweeps();
    zmq_msg_close(&msg);
    zmq_close(sub);
    zmq_ctx_term(ctx);
    return 0;
}
