/*
 * LD_PRELOAD shim for libreswan's pluto (tests/netns/peers/libreswan.py).
 *
 * Why: our test kernels have XFRM netlink and policies but no ESP, AH or IPComp, so
 * the kernel refuses every SA pluto installs ("Protocol not supported") and pluto then
 * aborts Quick Mode. The harness only needs pluto as an IKE peer, and needs to know the
 * keys it negotiated, so this shim answers pluto's SA and policy requests itself and
 * writes each SA pluto wanted to install as one JSON line to $LIBRESWAN_SA_LOG.
 *
 * How: pluto talks to the kernel over a NETLINK_XFRM socket, one request at a time:
 * write() the request, then recvfrom() until the reply with the same sequence number
 * from port 0 (the kernel) arrives. The shim remembers which fds are NETLINK_XFRM
 * sockets; when a request is one it answers (see `handled`), the request never reaches
 * the kernel and the next read on that fd returns the shim's reply instead.
 *
 * Policies are answered too, not passed on: with real policies and no real SAs the
 * kernel would drop the namespace's plaintext and send ACQUIREs that make pluto start
 * new Quick Modes. Everything else (pluto's start-up probes, reads of the broadcast
 * socket) goes to the kernel unchanged.
 *
 * Set LIBRESWAN_SHIM_LOG=FILE to have every XFRM request the shim sees, and its own
 * errors, appended to FILE (pluto points its stdout and stderr at /dev/null).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/xfrm.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FD 1024
#define REPLY_MAX 1024

static struct {
	unsigned char xfrm[MAX_FD];	/* fd is a NETLINK_XFRM socket */
	size_t reply_len[MAX_FD];	/* a reply waits to be read from fd */
	unsigned char reply[MAX_FD][REPLY_MAX];
} shim;
/* pluto's crypto helpers are threads; only the main thread does netlink, but be safe. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

#define REAL(ret, name, ...)                                                   \
	static ret (*real_##name)(__VA_ARGS__);                                \
	if (real_##name == NULL)                                               \
		real_##name = (ret(*)(__VA_ARGS__))dlsym(RTLD_NEXT, #name)

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	const char *path = getenv("LIBRESWAN_SHIM_LOG");
	if (path == NULL || *path == '\0')
		return;
	FILE *f = fopen(path, "ae");
	if (f == NULL)
		return;
	va_list ap;
	va_start(ap, fmt);
	fputs("libreswan_shim: ", f);
	vfprintf(f, fmt, ap);
	fputc('\n', f);
	va_end(ap);
	fclose(f);	/* glibc's fclose calls its own close, not ours */
}

/* ---- the JSON record ----------------------------------------------------------- */

struct jbuf {
	char s[8192];
	size_t n;
};

static void put(struct jbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct jbuf *b, const char *fmt, ...)
{
	va_list ap;
	if (b->n >= sizeof(b->s))
		return;
	va_start(ap, fmt);
	int r = vsnprintf(b->s + b->n, sizeof(b->s) - b->n, fmt, ap);
	va_end(ap);
	if (r > 0)
		b->n += (size_t)r;
}

static void put_hex(struct jbuf *b, const char *key, size_t bits)
{
	put(b, "\"");
	for (size_t i = 0; i < (bits + 7) / 8; i++)
		put(b, "%02x", (unsigned char)key[i]);
	put(b, "\"");
}

static void put_addr(struct jbuf *b, int family, const xfrm_address_t *a)
{
	char s[INET6_ADDRSTRLEN] = "?";
	inet_ntop(family, a, s, sizeof(s));
	put(b, "\"%s\"", s);
}

/* Whether attribute `a` really holds its struct and key: pluto's messages are trusted,
 * but a record is better null than read past the message. */
static int fits(const struct nlattr *a, size_t head, size_t key_bits)
{
	return a->nla_len >= NLA_HDRLEN + head + (key_bits + 7) / 8;
}

static void record_sa(const struct nlmsghdr *h)
{
	const char *path = getenv("LIBRESWAN_SA_LOG");
	if (path == NULL || *path == '\0')
		return;
	if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct xfrm_usersa_info)))
		return;
	const struct xfrm_usersa_info *sa = NLMSG_DATA(h);
	const struct nlattr *enc = NULL, *auth = NULL, *aead = NULL, *encap = NULL,
			    *comp = NULL, *esn = NULL;

	size_t at = NLMSG_LENGTH(NLMSG_ALIGN(sizeof(*sa)));
	while (at + NLA_HDRLEN <= h->nlmsg_len) {
		const struct nlattr *a = (const void *)((const char *)h + at);
		if (a->nla_len < NLA_HDRLEN || at + a->nla_len > h->nlmsg_len)
			break;
		switch (a->nla_type & NLA_TYPE_MASK) {
		case XFRMA_ALG_CRYPT: enc = a; break;
		case XFRMA_ALG_AUTH_TRUNC: auth = a; break;
		case XFRMA_ALG_AEAD: aead = a; break;
		case XFRMA_ENCAP: encap = a; break;
		case XFRMA_ALG_COMP: comp = a; break;
		case XFRMA_REPLAY_ESN_VAL: esn = a; break;
		}
		at += NLA_ALIGN(a->nla_len);
	}

	struct jbuf b = { .n = 0 };
	const char *proto = sa->id.proto == IPPROTO_ESP ? "esp" :
			    sa->id.proto == IPPROTO_AH ? "ah" :
			    sa->id.proto == IPPROTO_COMP ? "comp" : "other";
	const char *mode = sa->mode == XFRM_MODE_TRANSPORT ? "transport" :
			   sa->mode == XFRM_MODE_TUNNEL ? "tunnel" : "other";
	put(&b, "{\"op\":\"%s\",\"src\":", h->nlmsg_type == XFRM_MSG_NEWSA ? "new" : "update");
	put_addr(&b, sa->family, &sa->saddr);
	put(&b, ",\"dst\":");
	put_addr(&b, sa->family, &sa->id.daddr);
	/* pluto gives its replay window in the ESN attribute, even without ESN. */
	const struct xfrm_replay_state_esn *r =
		esn ? (const void *)((const char *)esn + NLA_HDRLEN) : NULL;
	unsigned window = r && fits(esn, sizeof(*r), 0) ? r->replay_window : sa->replay_window;
	put(&b, ",\"spi\":\"0x%08x\",\"proto\":\"%s\",\"mode\":\"%s\",\"reqid\":%u,"
		"\"replay_window\":%u,\"esn\":%s",
	    ntohl(sa->id.spi), proto, mode, sa->reqid, window,
	    sa->flags & XFRM_STATE_ESN ? "true" : "false");

	put(&b, ",\"enc\":");
	const struct xfrm_algo *e = enc ? (const void *)((const char *)enc + NLA_HDRLEN) : NULL;
	if (e && fits(enc, sizeof(*e), e->alg_key_len)) {
		put(&b, "{\"name\":\"%.64s\",\"key\":", e->alg_name);
		put_hex(&b, e->alg_key, e->alg_key_len);
		put(&b, "}");
	} else {
		put(&b, "null");
	}

	put(&b, ",\"auth\":");
	const struct xfrm_algo_auth *x = auth ? (const void *)((const char *)auth + NLA_HDRLEN) : NULL;
	if (x && fits(auth, sizeof(*x), x->alg_key_len)) {
		put(&b, "{\"name\":\"%.64s\",\"key\":", x->alg_name);
		put_hex(&b, x->alg_key, x->alg_key_len);
		put(&b, ",\"trunc_bits\":%u}", x->alg_trunc_len);
	} else {
		put(&b, "null");
	}

	put(&b, ",\"aead\":");
	const struct xfrm_algo_aead *g = aead ? (const void *)((const char *)aead + NLA_HDRLEN) : NULL;
	if (g && fits(aead, sizeof(*g), g->alg_key_len)) {
		/* For rfc4106(gcm(aes)) the key ends with the 4-byte salt (RFC 4106 8.1). */
		put(&b, "{\"name\":\"%.64s\",\"key\":", g->alg_name);
		put_hex(&b, g->alg_key, g->alg_key_len);
		put(&b, ",\"icv_bits\":%u}", g->alg_icv_len);
	} else {
		put(&b, "null");
	}

	put(&b, ",\"comp\":");
	const struct xfrm_algo *c = comp ? (const void *)((const char *)comp + NLA_HDRLEN) : NULL;
	if (c && fits(comp, sizeof(*c), 0))
		put(&b, "{\"name\":\"%.64s\"}", c->alg_name);
	else
		put(&b, "null");

	put(&b, ",\"encap\":");
	const struct xfrm_encap_tmpl *t = encap ? (const void *)((const char *)encap + NLA_HDRLEN) : NULL;
	if (t && fits(encap, sizeof(*t), 0))
		put(&b, "{\"type\":%u,\"sport\":%u,\"dport\":%u}", t->encap_type,
		    ntohs(t->encap_sport), ntohs(t->encap_dport));
	else
		put(&b, "null");
	put(&b, "}\n");

	if (b.n >= sizeof(b.s)) {
		say("SA record too long, not written");
		return;
	}
	/* One write() of a whole line with O_APPEND: lines never interleave. The real
	 * write and close: ours would take the lock our caller holds. */
	REAL(ssize_t, write, int, const void *, size_t);
	REAL(int, close, int);
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0 || real_write(fd, b.s, b.n) != (ssize_t)b.n)
		say("cannot append to %s: %s", path, strerror(errno));
	if (fd >= 0)
		real_close(fd);
}

/* ---- the replies ------------------------------------------------------------- */

static void reply_ack(int fd, const struct nlmsghdr *req)
{
	struct {
		struct nlmsghdr n;
		struct nlmsgerr e;
	} r = {
		.n = { .nlmsg_len = sizeof(r), .nlmsg_type = NLMSG_ERROR,
		       .nlmsg_seq = req->nlmsg_seq, .nlmsg_pid = req->nlmsg_pid },
		.e = { .error = 0, .msg = *req },
	};
	memcpy(shim.reply[fd], &r, sizeof(r));
	shim.reply_len[fd] = sizeof(r);
}

/* An SA as the kernel describes one: a NEWSA message carrying xfrm_usersa_info. */
static void reply_sa(int fd, const struct nlmsghdr *req, const struct xfrm_usersa_info *sa)
{
	struct {
		struct nlmsghdr n;
		struct xfrm_usersa_info sa;
	} r = {
		.n = { .nlmsg_len = sizeof(r), .nlmsg_type = XFRM_MSG_NEWSA,
		       .nlmsg_seq = req->nlmsg_seq, .nlmsg_pid = req->nlmsg_pid },
		.sa = *sa,
	};
	memcpy(shim.reply[fd], &r, sizeof(r));
	shim.reply_len[fd] = sizeof(r);
}

static const char *type_name(unsigned type)
{
	static char other[32];
	switch (type) {
	case XFRM_MSG_NEWSA: return "NEWSA (answered, recorded)";
	case XFRM_MSG_UPDSA: return "UPDSA (answered, recorded)";
	case XFRM_MSG_DELSA: return "DELSA (answered)";
	case XFRM_MSG_GETSA: return "GETSA (answered)";
	case XFRM_MSG_ALLOCSPI: return "ALLOCSPI (answered)";
	case XFRM_MSG_NEWPOLICY: return "NEWPOLICY (answered)";
	case XFRM_MSG_UPDPOLICY: return "UPDPOLICY (answered)";
	case XFRM_MSG_DELPOLICY: return "DELPOLICY (answered)";
	}
	snprintf(other, sizeof(other), "type %u (to the kernel)", type);
	return other;
}

/* Answers request `h` on `fd` if it is one the shim takes over; returns whether it did. */
static int handled(int fd, const struct nlmsghdr *h, size_t len)
{
	if (len < sizeof(*h) || h->nlmsg_len > len)
		return 0;
	say("%s seq %u", type_name(h->nlmsg_type), h->nlmsg_seq);
	switch (h->nlmsg_type) {
	case XFRM_MSG_NEWSA:
	case XFRM_MSG_UPDSA:
		record_sa(h);
		reply_ack(fd, h);
		return 1;
	case XFRM_MSG_DELSA:
	case XFRM_MSG_NEWPOLICY:
	case XFRM_MSG_UPDPOLICY:
	case XFRM_MSG_DELPOLICY:
		reply_ack(fd, h);
		return 1;
	case XFRM_MSG_ALLOCSPI: {
		/* The kernel would make a larval SA that expires after xfrm_acq_expires and
		 * tell pluto so; the SPI is all pluto wants from it. */
		if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct xfrm_userspi_info)))
			return 0;
		const struct xfrm_userspi_info *u = NLMSG_DATA(h);
		uint32_t r = 0;
		if (getrandom(&r, sizeof(r), 0) != sizeof(r))
			r = (uint32_t)getpid() * 2654435761u;
		uint64_t span = (uint64_t)u->max - u->min + 1;
		struct xfrm_usersa_info sa = u->info;
		sa.id.spi = htonl(u->min + (uint32_t)(r % span));
		reply_sa(fd, h, &sa);
		return 1;
	}
	case XFRM_MSG_GETSA: {
		/* Traffic counters (whack --trafficstatus, idle checks): an SA that has seen
		 * nothing, instead of the kernel's ENOENT for an SA it never had. */
		if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct xfrm_usersa_id)))
			return 0;
		const struct xfrm_usersa_id *id = NLMSG_DATA(h);
		struct xfrm_usersa_info sa;
		memset(&sa, 0, sizeof(sa));
		sa.id.daddr = id->daddr;
		sa.id.spi = id->spi;
		sa.id.proto = id->proto;
		sa.family = id->family;
		reply_sa(fd, h, &sa);
		return 1;
	}
	}
	return 0;
}

/* Takes a pending reply for `fd`, as the kernel's datagram would be read. */
static ssize_t take_reply(int fd, void *buf, size_t len, struct sockaddr *from,
			  socklen_t *fromlen)
{
	size_t n = shim.reply_len[fd];
	if (n > len)
		n = len;	/* a datagram socket truncates too */
	memcpy(buf, shim.reply[fd], n);
	shim.reply_len[fd] = 0;
	if (from != NULL && fromlen != NULL) {
		struct sockaddr_nl kernel = { .nl_family = AF_NETLINK, .nl_pid = 0 };
		socklen_t l = *fromlen < sizeof(kernel) ? *fromlen : sizeof(kernel);
		memcpy(from, &kernel, l);
		*fromlen = sizeof(kernel);
	}
	return (ssize_t)n;
}

static int is_xfrm(int fd)
{
	return fd >= 0 && fd < MAX_FD && shim.xfrm[fd];
}

/* ---- the wrapped calls --------------------------------------------------------- */

int socket(int domain, int type, int protocol)
{
	REAL(int, socket, int, int, int);
	int fd = real_socket(domain, type, protocol);
	if (fd >= 0 && fd < MAX_FD) {
		pthread_mutex_lock(&lock);
		shim.xfrm[fd] = domain == AF_NETLINK && protocol == NETLINK_XFRM;
		shim.reply_len[fd] = 0;
		pthread_mutex_unlock(&lock);
	}
	return fd;
}

int close(int fd)
{
	REAL(int, close, int);
	if (fd >= 0 && fd < MAX_FD) {
		pthread_mutex_lock(&lock);
		shim.xfrm[fd] = 0;
		shim.reply_len[fd] = 0;
		pthread_mutex_unlock(&lock);
	}
	return real_close(fd);
}

static int intercept_send(int fd, const void *buf, size_t len)
{
	if (!is_xfrm(fd))
		return 0;
	pthread_mutex_lock(&lock);
	int done = handled(fd, buf, len);
	pthread_mutex_unlock(&lock);
	return done;
}

static ssize_t intercept_recv(int fd, void *buf, size_t len, struct sockaddr *from,
			      socklen_t *fromlen)
{
	ssize_t n = -1;
	if (!is_xfrm(fd))
		return -1;
	pthread_mutex_lock(&lock);
	if (shim.reply_len[fd] > 0)
		n = take_reply(fd, buf, len, from, fromlen);
	pthread_mutex_unlock(&lock);
	return n;
}

ssize_t write(int fd, const void *buf, size_t len)
{
	REAL(ssize_t, write, int, const void *, size_t);
	if (intercept_send(fd, buf, len))
		return (ssize_t)len;
	return real_write(fd, buf, len);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
	REAL(ssize_t, send, int, const void *, size_t, int);
	if (intercept_send(fd, buf, len))
		return (ssize_t)len;
	return real_send(fd, buf, len, flags);
}

ssize_t sendto(int fd, const void *buf, size_t len, int flags, const struct sockaddr *to,
	       socklen_t tolen)
{
	REAL(ssize_t, sendto, int, const void *, size_t, int, const struct sockaddr *, socklen_t);
	if (intercept_send(fd, buf, len))
		return (ssize_t)len;
	return real_sendto(fd, buf, len, flags, to, tolen);
}

ssize_t read(int fd, void *buf, size_t len)
{
	REAL(ssize_t, read, int, void *, size_t);
	ssize_t n = intercept_recv(fd, buf, len, NULL, NULL);
	return n >= 0 ? n : real_read(fd, buf, len);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
	REAL(ssize_t, recv, int, void *, size_t, int);
	ssize_t n = intercept_recv(fd, buf, len, NULL, NULL);
	return n >= 0 ? n : real_recv(fd, buf, len, flags);
}

ssize_t recvfrom(int fd, void *buf, size_t len, int flags, struct sockaddr *from,
		 socklen_t *fromlen)
{
	REAL(ssize_t, recvfrom, int, void *, size_t, int, struct sockaddr *, socklen_t *);
	ssize_t n = intercept_recv(fd, buf, len, from, fromlen);
	return n >= 0 ? n : real_recvfrom(fd, buf, len, flags, from, fromlen);
}
