/*
 * A C host for the IPsec plugin: loads libipsec_plugin.so with dlopen() exactly as a
 * dialer or router would, through include/ipsec_plugin.h only, and checks the ABI
 * contract end to end with two plugin instances that protect traffic between each other.
 *
 * usage: host <path/to/libipsec_plugin.so> <empty work directory>
 * Exit status 0 when every check passed. Driven by plugin/tests/c_host.rs.
 */
#include "ipsec_plugin.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* The library's entry points, typed from the header's own prototypes. */
static struct {
    __typeof__(ipsec_version) *version;
    __typeof__(ipsec_abi_version) *abi_version;
    __typeof__(ipsec_status_describe) *status_describe;
    __typeof__(ipsec_plugin_new) *plugin_new;
    __typeof__(ipsec_plugin_free) *plugin_free;
    __typeof__(ipsec_plugin_outbound) *outbound;
    __typeof__(ipsec_plugin_outbound_batch) *outbound_batch;
    __typeof__(ipsec_plugin_inbound) *inbound;
    __typeof__(ipsec_plugin_connect) *connect;
    __typeof__(ipsec_plugin_link_down) *link_down;
    __typeof__(ipsec_plugin_reload) *reload;
    __typeof__(ipsec_plugin_install_keys) *install_keys;
    __typeof__(ipsec_plugin_dump) *dump;
    __typeof__(ipsec_plugin_set_link_mtu) *set_link_mtu;
    __typeof__(ipsec_plugin_overhead) *overhead;
    __typeof__(ipsec_plugin_control_listen) *control_listen;
    __typeof__(ipsec_plugin_tick) *tick;
    __typeof__(ipsec_plugin_daemon_connect) *daemon_connect;
    __typeof__(ipsec_plugin_daemon_disconnect) *daemon_disconnect;
} lib;

static int checks, failures;

#define CHECK(cond, ...)                                          \
    do {                                                          \
        checks++;                                                 \
        if (!(cond)) {                                            \
            failures++;                                           \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                         \
            fputc('\n', stderr);                                  \
        }                                                         \
    } while (0)

static void load_symbol(void *dl, const char *name, void *fn_slot, size_t size) {
    void *sym = dlsym(dl, name);
    if (sym == NULL) {
        fprintf(stderr, "FAIL: symbol %s missing: %s\n", name, dlerror());
        exit(1);
    }
    /* POSIX guarantees a data pointer from dlsym converts to the function pointer. */
    memcpy(fn_slot, &sym, size);
}
#define LOAD(dl, field, name) load_symbol(dl, name, &lib.field, sizeof lib.field)

/* ---- host callbacks ---------------------------------------------------------------- */

struct host_context {
    const char *name;
    atomic_int lines;
    uint64_t now_ms;
};

static void output_window(void *context, const char *line) {
    struct host_context *host = context;
    atomic_fetch_add(&host->lines, 1);
    fprintf(stderr, "[%s] %s\n", host->name, line);
}

static uint64_t clock_ms(void *context) {
    return ((struct host_context *)context)->now_ms;
}

static ipsec_host_callbacks callbacks_for(struct host_context *host) {
    ipsec_host_callbacks callbacks;
    memset(&callbacks, 0, sizeof callbacks);
    callbacks.abi_version = IPSEC_ABI_VERSION;
    callbacks.context = host;
    callbacks.output_window = output_window;
    callbacks.clock_ms = clock_ms;
    callbacks.emit_packet = NULL;
    return callbacks;
}

static ipsec_open_options options_for(const char *config_path) {
    ipsec_open_options options;
    memset(&options, 0, sizeof options);
    options.abi_version = IPSEC_ABI_VERSION;
    options.config_path = config_path;
    return options;
}

/* ---- configuration ----------------------------------------------------------------- */

static const char *const KEY_A_TO_B_ENC = "0x0123456789abcdef_0123456789abcdef";
static const char *const KEY_B_TO_A_ENC = "0xfedcba9876543210_fedcba9876543210";
static const char *const KEY_A_TO_B_AUTH = "0x00112233445566778899aabbccddeeff00112233";
static const char *const KEY_B_TO_A_AUTH = "0xffeeddccbbaa99887766554433221100ffeeddcc";

/* Transport-mode ESP aes128-sha1 between 192.0.2.1 (a) and 192.0.2.2 (b). */
static void write_config(const char *dir, const char *name, int is_a) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/ipsec.cfg", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    fprintf(f,
            "; written by tests/c-host/host.c\n"
            "[%s]\n"
            "local = %s\n"
            "remote = %s\n"
            "mode = transport\n"
            "esp = aes128-sha1\n"
            "esp_spi_out = %s\n"
            "esp_spi_in = %s\n"
            "esp_enc_key_out = %s\n"
            "esp_enc_key_in = %s\n"
            "esp_auth_key_out = %s\n"
            "esp_auth_key_in = %s\n",
            is_a ? "a-to-b" : "b-to-a",
            is_a ? "192.0.2.1" : "192.0.2.2",
            is_a ? "192.0.2.2" : "192.0.2.1",
            is_a ? "0x1001" : "0x1002",
            is_a ? "0x1002" : "0x1001",
            is_a ? KEY_A_TO_B_ENC : KEY_B_TO_A_ENC,
            is_a ? KEY_B_TO_A_ENC : KEY_A_TO_B_ENC,
            is_a ? KEY_A_TO_B_AUTH : KEY_B_TO_A_AUTH,
            is_a ? KEY_B_TO_A_AUTH : KEY_A_TO_B_AUTH);
    fclose(f);
}

/* ---- packets ----------------------------------------------------------------------- */

enum { ICMP_PAYLOAD = 56, ECHO_LEN = 20 + 8 + ICMP_PAYLOAD, HEADROOM = 256, BUF_SIZE = 2048 };

static uint16_t inet_checksum(const uint8_t *p, size_t n) {
    uint32_t sum = 0;
    for (size_t i = 0; i + 1 < n; i += 2) sum += (uint32_t)(p[i] << 8 | p[i + 1]);
    if (n & 1) sum += (uint32_t)(p[n - 1] << 8);
    while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }

/* An ICMP echo request (type 8) or reply (type 0) with a 56-byte payload. */
static void build_echo(uint8_t *p, const uint8_t src[4], const uint8_t dst[4], uint8_t type,
                       uint16_t seq) {
    memset(p, 0, ECHO_LEN);
    p[0] = 0x45;
    put16(p + 2, ECHO_LEN);
    put16(p + 4, seq);
    p[8] = 64;
    p[9] = 1; /* ICMP */
    memcpy(p + 12, src, 4);
    memcpy(p + 16, dst, 4);
    put16(p + 10, inet_checksum(p, 20));
    uint8_t *icmp = p + 20;
    icmp[0] = type;
    put16(icmp + 4, 0x4242);
    put16(icmp + 6, seq);
    for (int i = 0; i < ICMP_PAYLOAD; i++) icmp[8 + i] = (uint8_t)(i + seq);
    put16(icmp + 2, inet_checksum(icmp, 8 + ICMP_PAYLOAD));
}

static const uint8_t ADDR_A[4] = {192, 0, 2, 1};
static const uint8_t ADDR_B[4] = {192, 0, 2, 2};
static const uint8_t ADDR_ELSEWHERE[4] = {198, 51, 100, 9};

/* Sends `plain` out through `from` and in through `to`; 1 when it arrives byte-identical. */
static int round_trip(const ipsec_plugin *from, const ipsec_plugin *to, const uint8_t *plain,
                      int report) {
    uint8_t wire_buf[BUF_SIZE], rx_buf[BUF_SIZE];
    memcpy(wire_buf + HEADROOM, plain, ECHO_LEN);
    ipsec_packet pkt = {wire_buf, sizeof wire_buf, HEADROOM, ECHO_LEN};
    ipsec_verdict v = lib.outbound(from, &pkt);
    if (report) {
        CHECK(v == IPSEC_VERDICT_TRANSFORMED, "outbound verdict %u", (unsigned)v);
        CHECK(pkt.offset + pkt.length <= pkt.capacity, "offset %zu length %zu", pkt.offset, pkt.length);
        CHECK(pkt.length > ECHO_LEN, "ESP adds bytes: length %zu", pkt.length);
        CHECK(wire_buf[pkt.offset + 9] == 50, "outer protocol %u, want ESP (50)",
              wire_buf[pkt.offset + 9]);
    }
    if (v != IPSEC_VERDICT_TRANSFORMED) return 0;

    /* The receiver gets the wire bytes in its own buffer, at another offset. */
    size_t rx_offset = 64;
    memcpy(rx_buf + rx_offset, wire_buf + pkt.offset, pkt.length);
    ipsec_packet rx = {rx_buf, sizeof rx_buf, rx_offset, pkt.length};
    v = lib.inbound(to, &rx);
    int intact = v == IPSEC_VERDICT_TRANSFORMED && rx.length == ECHO_LEN &&
                 memcmp(rx_buf + rx.offset, plain, ECHO_LEN) == 0;
    if (report) {
        CHECK(v == IPSEC_VERDICT_TRANSFORMED, "inbound verdict %u", (unsigned)v);
        CHECK(intact, "packet not byte-identical after round trip (length %zu)", rx.length);

        /* The same wire bytes with one ciphertext bit flipped must fail the ICV. */
        memcpy(rx_buf + rx_offset, wire_buf + pkt.offset, pkt.length);
        rx_buf[rx_offset + 20 + 8 + 20] ^= 0x01;
        ipsec_packet bad = {rx_buf, sizeof rx_buf, rx_offset, pkt.length};
        v = lib.inbound(to, &bad);
        CHECK(v == IPSEC_VERDICT_DROP, "tampered packet verdict %u, want DROP", (unsigned)v);
    }
    return intact;
}

/* Pushes BATCH packets out through `from` in one call (one of them unusable) and each
   in through `to`; checks every protected one arrives intact. */
enum { BATCH = 40 };
static void batch_round_trip(const ipsec_plugin *from, const ipsec_plugin *to) {
    static uint8_t bufs[BATCH][BUF_SIZE];
    uint8_t plains[BATCH][ECHO_LEN];
    ipsec_packet pkts[BATCH];
    ipsec_verdict verdicts[BATCH];
    for (int i = 0; i < BATCH; i++) {
        build_echo(plains[i], ADDR_A, ADDR_B, 8, (uint16_t)(1000 + i));
        memcpy(bufs[i] + HEADROOM, plains[i], ECHO_LEN);
        pkts[i] = (ipsec_packet){bufs[i], sizeof bufs[i], HEADROOM, ECHO_LEN};
    }
    pkts[7].buffer = NULL; /* unusable: must be dropped alone */
    CHECK(lib.outbound_batch(from, pkts, BATCH, verdicts) == IPSEC_OK, "batch status");
    CHECK(lib.outbound_batch(NULL, pkts, BATCH, verdicts) == IPSEC_ERR_NULL, "batch NULL plugin");
    CHECK(lib.outbound_batch(from, NULL, 1, verdicts) == IPSEC_ERR_NULL, "batch NULL packets");
    CHECK(lib.outbound_batch(from, NULL, 0, NULL) == IPSEC_OK, "empty batch");
    int intact = 0;
    for (int i = 0; i < BATCH; i++) {
        if (i == 7) {
            CHECK(verdicts[i] == IPSEC_VERDICT_DROP, "NULL buffer in a batch: verdict %u", (unsigned)verdicts[i]);
            continue;
        }
        CHECK(verdicts[i] == IPSEC_VERDICT_TRANSFORMED, "batch packet %d verdict %u", i, (unsigned)verdicts[i]);
        ipsec_verdict v = lib.inbound(to, &pkts[i]);
        intact += v == IPSEC_VERDICT_TRANSFORMED && pkts[i].length == ECHO_LEN &&
                  memcmp(bufs[i] + pkts[i].offset, plains[i], ECHO_LEN) == 0;
    }
    CHECK(intact == BATCH - 1, "%d of %d batch packets intact", intact, BATCH - 1);
}

/* ---- concurrency ------------------------------------------------------------------- */

enum { THREADS = 4, PACKETS_PER_THREAD = 300 };

struct worker {
    const ipsec_plugin *a, *b;
    int index;
    int intact;
};

static void *worker_main(void *arg) {
    struct worker *w = arg;
    uint8_t plain[ECHO_LEN];
    for (int i = 0; i < PACKETS_PER_THREAD; i++) {
        build_echo(plain, ADDR_A, ADDR_B, 8, (uint16_t)(w->index * PACKETS_PER_THREAD + i));
        w->intact += round_trip(w->a, w->b, plain, 0);
    }
    return NULL;
}

/* ---- the checks -------------------------------------------------------------------- */

static void check_open_errors(const char *dir) {
    struct host_context host = {"open-errors", 0, 1700000000000ULL};
    ipsec_host_callbacks callbacks = callbacks_for(&host);
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/no-such-dir/ipsec.cfg", dir);
    ipsec_open_options options = options_for(missing);
    ipsec_plugin *out = (ipsec_plugin *)&host; /* any non-NULL value: must be cleared */

    CHECK(lib.plugin_new(&options, &callbacks, NULL) == IPSEC_ERR_NULL, "NULL out");
    CHECK(lib.plugin_new(NULL, &callbacks, &out) == IPSEC_ERR_NULL, "NULL options");
    CHECK(out == NULL, "a failed open clears *out");
    CHECK(lib.plugin_new(&options, NULL, &out) == IPSEC_ERR_NULL, "NULL callbacks");

    ipsec_open_options wrong_version = options;
    wrong_version.abi_version = IPSEC_ABI_VERSION + 1;
    CHECK(lib.plugin_new(&wrong_version, &callbacks, &out) == IPSEC_ERR_ABI_VERSION, "abi");
    ipsec_open_options unknown_flag = options;
    unknown_flag.flags = 0x80;
    CHECK(lib.plugin_new(&unknown_flag, &callbacks, &out) == IPSEC_ERR_INVALID, "flags");

    ipsec_status s = lib.plugin_new(&options, &callbacks, &out);
    CHECK(s == IPSEC_ERR_CONFIG_IO, "missing config gives %s", lib.status_describe(s));
    CHECK(out == NULL, "no handle on failure");
    CHECK(atomic_load(&host.lines) > 0, "the open failure is shown in the output window");
}

static void check_null_handling(const ipsec_plugin *a) {
    uint8_t buf[BUF_SIZE];
    build_echo(buf + HEADROOM, ADDR_A, ADDR_B, 8, 1);
    ipsec_packet pkt = {buf, sizeof buf, HEADROOM, ECHO_LEN};

    lib.plugin_free(NULL);
    CHECK(lib.outbound(a, NULL) == IPSEC_VERDICT_DROP, "NULL packet");
    CHECK(lib.inbound(a, NULL) == IPSEC_VERDICT_DROP, "NULL packet inbound");
    CHECK(lib.outbound(NULL, &pkt) == IPSEC_VERDICT_DROP, "NULL plugin");

    ipsec_packet no_buffer = {NULL, sizeof buf, HEADROOM, ECHO_LEN};
    CHECK(lib.outbound(a, &no_buffer) == IPSEC_VERDICT_DROP, "NULL buffer");
    ipsec_packet past_end = {buf, sizeof buf, sizeof buf - 10, ECHO_LEN};
    CHECK(lib.inbound(a, &past_end) == IPSEC_VERDICT_DROP, "offset + length > capacity");
    ipsec_packet wraps = {buf, sizeof buf, SIZE_MAX, 2};
    CHECK(lib.outbound(a, &wraps) == IPSEC_VERDICT_DROP, "offset + length overflows");
    CHECK(past_end.offset == sizeof buf - 10 && past_end.length == ECHO_LEN, "a drop leaves the packet");

    CHECK(lib.connect(NULL, 0) == IPSEC_ERR_NULL, "connect NULL");
    CHECK(lib.link_down(NULL) == IPSEC_ERR_NULL, "link_down NULL");
    CHECK(lib.reload(NULL) == IPSEC_ERR_NULL, "reload NULL");
    CHECK(lib.install_keys(a, NULL, "x") == IPSEC_ERR_NULL, "install_keys NULL bundle");
    size_t needed = 0;
    CHECK(lib.dump(a, IPSEC_DUMP_TEXT, NULL, 0, NULL) == IPSEC_ERR_NULL, "dump NULL needed");
    CHECK(lib.dump(a, 7, NULL, 0, &needed) == IPSEC_ERR_INVALID, "dump unknown format");
}

static void check_dump(const ipsec_plugin *p, const char *peer) {
    size_t needed = 0;
    ipsec_status s = lib.dump(p, IPSEC_DUMP_TEXT, NULL, 0, &needed);
    CHECK(s == IPSEC_ERR_BUFFER_TOO_SMALL, "size query gives %s", lib.status_describe(s));
    CHECK(needed > 1, "the SA table is not empty");

    char small[4];
    if (needed > sizeof small) {
        s = lib.dump(p, IPSEC_DUMP_TEXT, small, sizeof small, &needed);
        CHECK(s == IPSEC_ERR_BUFFER_TOO_SMALL && small[0] == '\0', "short buffer is left empty");
    }

    size_t capacity = needed + 256;
    char *text = malloc(capacity);
    s = lib.dump(p, IPSEC_DUMP_TEXT, text, capacity, &needed);
    CHECK(s == IPSEC_OK, "dump gives %s", lib.status_describe(s));
    CHECK(strlen(text) + 1 == needed, "needed counts the NUL");
    CHECK(strstr(text, peer) != NULL, "text dump names the peer %s:\n%s", peer, text);
    free(text);

    s = lib.dump(p, IPSEC_DUMP_JSON, NULL, 0, &needed);
    char *json = malloc(needed);
    s = lib.dump(p, IPSEC_DUMP_JSON, json, needed, &needed);
    CHECK(s == IPSEC_OK, "json dump gives %s", lib.status_describe(s));
    const char *first = json + strspn(json, " \t\r\n");
    CHECK(*first == '{' || *first == '[', "JSON starts with an object or array: %.40s", json);
    free(json);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s <libipsec_plugin.so> <empty work directory>\n", argv[0]);
        return 2;
    }
    void *dl = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (dl == NULL) {
        fprintf(stderr, "FAIL: dlopen %s: %s\n", argv[1], dlerror());
        return 1;
    }
    LOAD(dl, version, "ipsec_version");
    LOAD(dl, abi_version, "ipsec_abi_version");
    LOAD(dl, status_describe, "ipsec_status_describe");
    LOAD(dl, plugin_new, "ipsec_plugin_new");
    LOAD(dl, plugin_free, "ipsec_plugin_free");
    LOAD(dl, outbound, "ipsec_plugin_outbound");
    LOAD(dl, outbound_batch, "ipsec_plugin_outbound_batch");
    LOAD(dl, inbound, "ipsec_plugin_inbound");
    LOAD(dl, connect, "ipsec_plugin_connect");
    LOAD(dl, link_down, "ipsec_plugin_link_down");
    LOAD(dl, reload, "ipsec_plugin_reload");
    LOAD(dl, install_keys, "ipsec_plugin_install_keys");
    LOAD(dl, dump, "ipsec_plugin_dump");
    LOAD(dl, set_link_mtu, "ipsec_plugin_set_link_mtu");
    LOAD(dl, overhead, "ipsec_plugin_overhead");
    LOAD(dl, control_listen, "ipsec_plugin_control_listen");
    LOAD(dl, tick, "ipsec_plugin_tick");
    LOAD(dl, daemon_connect, "ipsec_plugin_daemon_connect");
    LOAD(dl, daemon_disconnect, "ipsec_plugin_daemon_disconnect");

    CHECK(lib.abi_version() == IPSEC_ABI_VERSION, "library ABI %u, header %u",
          lib.abi_version(), IPSEC_ABI_VERSION);
    CHECK(lib.version() != NULL && lib.version()[0] != '\0', "version string");
    printf("c-host: libipsec_plugin %s, ABI %u\n", lib.version(), lib.abi_version());

    const char *dir = argv[2];
    check_open_errors(dir);

    write_config(dir, "a", 1);
    write_config(dir, "b", 0);
    char path_a[4096], path_b[4096], log_b[4096];
    snprintf(path_a, sizeof path_a, "%s/a", dir); /* a directory holding ipsec.cfg */
    snprintf(path_b, sizeof path_b, "%s/b/ipsec.cfg", dir);
    snprintf(log_b, sizeof log_b, "%s/b/b.log", dir);

    struct host_context host_a = {"a", 0, 1700000000000ULL};
    struct host_context host_b = {"b", 0, 1700000000000ULL};
    ipsec_host_callbacks callbacks_a = callbacks_for(&host_a);
    ipsec_host_callbacks callbacks_b = callbacks_for(&host_b);
    ipsec_open_options options_a = options_for(path_a);
    ipsec_open_options options_b = options_for(path_b);
    options_b.log_path = log_b;
    options_b.flags = IPSEC_OPEN_DEBUG;

    ipsec_plugin *a = NULL, *b = NULL;
    ipsec_status s = lib.plugin_new(&options_a, &callbacks_a, &a);
    CHECK(s == IPSEC_OK && a != NULL, "open a: %s", lib.status_describe(s));
    s = lib.plugin_new(&options_b, &callbacks_b, &b);
    CHECK(s == IPSEC_OK && b != NULL, "open b: %s", lib.status_describe(s));
    if (a == NULL || b == NULL) {
        fprintf(stderr, "c-host: cannot go on without both instances\n");
        return 1;
    }
    struct stat st;
    CHECK(stat(log_b, &st) == 0, "log_path %s is used", log_b);

    uint8_t plain[ECHO_LEN];
    build_echo(plain, ADDR_A, ADDR_B, 8, 1);
    CHECK(round_trip(a, b, plain, 1), "echo request a -> b arrives intact");
    batch_round_trip(a, b);

    /* MTU, overhead and the control socket. */
    uint32_t overhead = 0;
    CHECK(lib.overhead(a, &overhead) == IPSEC_OK && overhead == 53, "ESP aes128-sha1 overhead %u, want 53", overhead);
    CHECK(lib.overhead(a, NULL) == IPSEC_ERR_NULL, "overhead NULL");
    CHECK(lib.set_link_mtu(a, 1400) == IPSEC_OK, "set_link_mtu 1400");
    CHECK(lib.set_link_mtu(a, 10) == IPSEC_ERR_INVALID, "set_link_mtu 10");
    char sock[4096];
    snprintf(sock, sizeof sock, "%s/control.sock", dir);
    CHECK(lib.control_listen(a, sock) == IPSEC_OK, "control_listen");
    CHECK(access(sock, F_OK) == 0, "the control socket exists");
    CHECK(lib.control_listen(b, sock) == IPSEC_ERR_CONTROL_IO, "a served path is refused");
    CHECK(lib.control_listen(a, NULL) == IPSEC_OK, "control_listen NULL stops");
    CHECK(access(sock, F_OK) != 0, "the control socket is gone");

    /* Housekeeping and the keying daemon link (no daemon runs here: connecting only starts
       the link's search for one, and stopping it must be quick and clean). */
    CHECK(lib.tick(a) == IPSEC_OK && lib.tick(NULL) == IPSEC_ERR_NULL, "tick");
    char ctl[4096];
    snprintf(ctl, sizeof ctl, "%s/no-daemon.ctl", dir);
    CHECK(lib.daemon_connect(a, ctl) == IPSEC_OK, "daemon_connect");
    CHECK(lib.daemon_connect(a, "") == IPSEC_ERR_INVALID, "daemon_connect empty path");
    CHECK(lib.daemon_connect(NULL, ctl) == IPSEC_ERR_NULL, "daemon_connect NULL");
    CHECK(lib.daemon_disconnect(a) == IPSEC_OK, "daemon_disconnect");
    CHECK(lib.daemon_disconnect(NULL) == IPSEC_ERR_NULL, "daemon_disconnect NULL");
    CHECK(round_trip(a, b, plain, 0), "traffic still flows after the link calls");
    build_echo(plain, ADDR_B, ADDR_A, 0, 1);
    CHECK(round_trip(b, a, plain, 1), "echo reply b -> a arrives intact");

    /* Traffic no bundle selects passes untouched. */
    uint8_t buf[BUF_SIZE];
    build_echo(buf + HEADROOM, ADDR_A, ADDR_ELSEWHERE, 8, 2);
    build_echo(plain, ADDR_A, ADDR_ELSEWHERE, 8, 2);
    ipsec_packet other = {buf, sizeof buf, HEADROOM, ECHO_LEN};
    ipsec_verdict v = lib.outbound(a, &other);
    CHECK(v == IPSEC_VERDICT_PASS, "unselected traffic verdict %u, want PASS", (unsigned)v);
    CHECK(other.offset == HEADROOM && other.length == ECHO_LEN &&
              memcmp(buf + HEADROOM, plain, ECHO_LEN) == 0,
          "a passed packet is unchanged");

    check_null_handling(a);
    check_dump(a, "192.0.2.2");
    check_dump(b, "192.0.2.1");

    s = lib.install_keys(a, "no-such-bundle", "esp_spi_out = 0x1003\n");
    CHECK(s == IPSEC_ERR_NO_SUCH_BUNDLE, "unknown bundle gives %s", lib.status_describe(s));
    s = lib.install_keys(a, "a-to-b", "esp_spi_out = 0x1003\n");
    CHECK(s == IPSEC_ERR_NOT_IKE_BUNDLE, "manual bundle gives %s", lib.status_describe(s));
    CHECK(lib.connect(a, 0xC0000201u) == IPSEC_OK, "connect");
    s = lib.reload(b);
    CHECK(s == IPSEC_OK, "reload gives %s", lib.status_describe(s));

    /* Both instances are shared by several threads at once. */
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int i = 0; i < THREADS; i++) {
        workers[i] = (struct worker){a, b, i, 0};
        CHECK(pthread_create(&threads[i], NULL, worker_main, &workers[i]) == 0, "thread %d", i);
    }
    int intact = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(threads[i], NULL);
        intact += workers[i].intact;
    }
    CHECK(intact == THREADS * PACKETS_PER_THREAD, "concurrent round trips: %d of %d intact",
          intact, THREADS * PACKETS_PER_THREAD);

    CHECK(lib.link_down(a) == IPSEC_OK, "link_down");
    lib.plugin_free(a);
    lib.plugin_free(b);
    dlclose(dl);

    if (failures == 0)
        printf("c-host: all %d checks passed\n", checks);
    else
        printf("c-host: %d of %d checks failed\n", failures, checks);
    return failures == 0 ? 0 : 1;
}
