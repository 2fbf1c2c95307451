/*
 * c-operator: a minimal C tracing target. `long reconcile(long id)` is the
 * traced function (noipa: never inlined, cloned or IPA-optimized; returns
 * id*7+3). -threads pthreads take ids 0,1,2,... from a shared counter and call
 * it, -calls times in total.
 *
 * Usage (Go-style flags: -flag value, -flag=value, --flag also accepted):
 *   c-operator [-threads 2] [-calls N] [-rate R] [-work-us U]
 *              [-ground-truth FILE] [-wait-signal] [-linger]
 *
 *   -threads T       worker threads (default 2; -workers is an alias)
 *   -calls N         total reconcile calls (default 0 = unlimited)
 *   -rate R          calls per second over all threads (0 = as fast as possible)
 *   -work-us U       busy work inside reconcile, microseconds (default 0)
 *   -ground-truth F  JSON Lines, one per call:
 *                    {"seq", "entry_ns", "exit_ns", "thread", "arg", "ret"}
 *                    seq is the 1-based global call number taken at entry;
 *                    entry_ns/exit_ns are CLOCK_MONOTONIC read inside reconcile
 *                    at its start and just before it returns; thread is gettid().
 *                    When all calls are done: {"done": true, "calls": N}.
 *                    On SIGINT/SIGTERM before that:
 *                    {"interrupted": true, "signal": "...", "calls": N}.
 *   -wait-signal     print "ready pid=<pid>" and wait for SIGUSR1 before calling
 *   -linger          after all calls are done stay idle until SIGINT/SIGTERM
 *
 * Every signal except SIGURG is reported on stderr as "signal: <name>"
 * (lower-case strsignal, e.g. "signal: interrupt"). SIGINT/SIGTERM flush the
 * ground truth and exit 0.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static long opt_threads = 2;
static long opt_calls = 0;
static double opt_rate = 0;
static long opt_work_us = 0;
static const char *opt_gt = NULL;
static bool opt_wait_signal = false;
static bool opt_linger = false;

static atomic_long next_id;
static atomic_long call_seq;
static struct timespec start_ts;

static FILE *gt;
static pthread_mutex_t gt_mu = PTHREAD_MUTEX_INITIALIZER;
static long gt_calls;
static bool gt_closed;

static pthread_mutex_t start_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t start_cv = PTHREAD_COND_INITIALIZER;
static bool started;

/* what reconcile measured on this thread, read by the caller after it returns */
static __thread long t_seq;
static __thread long long t_entry_ns, t_exit_ns;

static inline long long mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

__attribute__((noipa)) long reconcile(long id)
{
	long long entry = mono_ns();
	long seq = atomic_fetch_add(&call_seq, 1) + 1;
	volatile long acc = id;
	for (int i = 0; i < 32; i++)
		acc = acc * 31 + i;
	if (opt_work_us > 0) {
		long long until = entry + opt_work_us * 1000LL;
		while (mono_ns() < until)
			acc = acc + 1;
	}
	long ret = id * 7 + 3;
	t_seq = seq;
	t_entry_ns = entry;
	t_exit_ns = mono_ns();
	return ret;
}

static void sleep_until_ns(long long t)
{
	struct timespec ts = {.tv_sec = t / 1000000000LL, .tv_nsec = t % 1000000000LL};
	while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
		;
}

static void *worker(void *arg)
{
	(void)arg;
	int tid = gettid();
	long long t0 = start_ts.tv_sec * 1000000000LL + start_ts.tv_nsec;
	for (;;) {
		long id = atomic_fetch_add(&next_id, 1);
		if (opt_calls > 0 && id >= opt_calls)
			break;
		if (opt_rate > 0)
			sleep_until_ns(t0 + (long long)((double)id / opt_rate * 1e9));
		long ret = reconcile(id);
		if (gt) {
			pthread_mutex_lock(&gt_mu);
			if (!gt_closed) {
				fprintf(gt,
					"{\"seq\": %ld, \"entry_ns\": %lld, \"exit_ns\": %lld, "
					"\"thread\": %d, \"arg\": %ld, \"ret\": %ld}\n",
					t_seq, t_entry_ns, t_exit_ns, tid, id, ret);
				gt_calls++;
			}
			pthread_mutex_unlock(&gt_mu);
		}
	}
	return NULL;
}

static const char *signame(int sig, char *buf, size_t n)
{
	snprintf(buf, n, "%s", strsignal(sig));
	for (char *p = buf; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	return buf;
}

static sigset_t handled;

static void *signal_thread(void *arg)
{
	(void)arg;
	for (;;) {
		int sig;
		if (sigwait(&handled, &sig) != 0)
			continue;
		if (sig == SIGURG)
			continue;
		char name[64];
		signame(sig, name, sizeof name);
		fprintf(stderr, "signal: %s\n", name);
		if (sig == SIGUSR1) {
			pthread_mutex_lock(&start_mu);
			started = true;
			pthread_cond_broadcast(&start_cv);
			pthread_mutex_unlock(&start_mu);
		} else if (sig == SIGINT || sig == SIGTERM) {
			if (gt) {
				pthread_mutex_lock(&gt_mu); /* kept locked: nothing written after this */
				if (!gt_closed)
					fprintf(gt, "{\"interrupted\": true, \"signal\": \"%s\", \"calls\": %ld}\n",
						name, gt_calls);
				gt_closed = true;
				fflush(gt);
			}
			fflush(stdout);
			_exit(0);
		}
	}
	return NULL;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: c-operator [-threads 2] [-calls N] [-rate R] [-work-us U]\n"
		   "                  [-ground-truth FILE] [-wait-signal] [-linger]\n");
}

static void bad(const char *msg, const char *arg)
{
	fprintf(stderr, "c-operator: %s: %s\n", msg, arg);
	usage(stderr);
	exit(2);
}

static long parse_long(const char *flag, const char *v)
{
	char *end;
	errno = 0;
	long x = strtol(v, &end, 10);
	if (errno || *v == '\0' || *end != '\0' || x < 0)
		bad("invalid value for flag", flag);
	return x;
}

static void parse_args(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (a[0] != '-' || a[1] == '\0')
			bad("unexpected argument", a);
		a += (a[1] == '-') ? 2 : 1;
		char name[64];
		const char *val = NULL;
		const char *eq = strchr(a, '=');
		size_t len = eq ? (size_t)(eq - a) : strlen(a);
		if (len == 0 || len >= sizeof name)
			bad("bad flag", argv[i]);
		memcpy(name, a, len);
		name[len] = '\0';
		if (eq)
			val = eq + 1;

		if (!strcmp(name, "h") || !strcmp(name, "help")) {
			usage(stdout);
			exit(0);
		}
		if (!strcmp(name, "wait-signal") || !strcmp(name, "linger")) {
			bool b = true;
			if (val) {
				if (!strcmp(val, "true") || !strcmp(val, "1"))
					b = true;
				else if (!strcmp(val, "false") || !strcmp(val, "0"))
					b = false;
				else
					bad("invalid boolean value for flag", argv[i]);
			}
			*(name[0] == 'w' ? &opt_wait_signal : &opt_linger) = b;
			continue;
		}
		if (!val) {
			if (i + 1 >= argc)
				bad("flag needs an argument", argv[i]);
			val = argv[++i];
		}
		if (!strcmp(name, "threads") || !strcmp(name, "workers")) {
			opt_threads = parse_long(name, val);
			if (opt_threads < 1)
				bad("-threads must be >= 1", val);
		} else if (!strcmp(name, "calls")) {
			opt_calls = parse_long(name, val);
		} else if (!strcmp(name, "work-us")) {
			opt_work_us = parse_long(name, val);
		} else if (!strcmp(name, "rate")) {
			char *end;
			opt_rate = strtod(val, &end);
			if (*val == '\0' || *end != '\0' || opt_rate < 0)
				bad("invalid value for flag", name);
		} else if (!strcmp(name, "ground-truth")) {
			opt_gt = val;
		} else {
			bad("flag provided but not defined", argv[i]);
		}
	}
}

int main(int argc, char **argv)
{
	parse_args(argc, argv);

	if (opt_gt) {
		gt = fopen(opt_gt, "w");
		if (!gt) {
			perror(opt_gt);
			return 1;
		}
		setvbuf(gt, NULL, _IOFBF, 1 << 16);
	}

	/* All asynchronous signals go to one sigwait thread; fault signals and
	 * SIGTRAP keep their default action so a stray one is fatal and visible. */
	sigfillset(&handled);
	int sync_sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGABRT, SIGSYS, SIGKILL, SIGSTOP};
	for (size_t i = 0; i < sizeof sync_sigs / sizeof sync_sigs[0]; i++)
		sigdelset(&handled, sync_sigs[i]);
	pthread_sigmask(SIG_BLOCK, &handled, NULL);
	pthread_t st;
	if (pthread_create(&st, NULL, signal_thread, NULL) != 0) {
		perror("pthread_create");
		return 1;
	}

	if (opt_wait_signal) {
		printf("ready pid=%d\n", getpid());
		fflush(stdout);
		pthread_mutex_lock(&start_mu);
		while (!started)
			pthread_cond_wait(&start_cv, &start_mu);
		pthread_mutex_unlock(&start_mu);
	}

	clock_gettime(CLOCK_MONOTONIC, &start_ts);
	pthread_t *tids = calloc((size_t)opt_threads, sizeof *tids);
	for (long i = 0; i < opt_threads; i++) {
		if (pthread_create(&tids[i], NULL, worker, NULL) != 0) {
			perror("pthread_create");
			return 1;
		}
	}
	for (long i = 0; i < opt_threads; i++)
		pthread_join(tids[i], NULL);

	if (gt) {
		pthread_mutex_lock(&gt_mu);
		if (!gt_closed)
			fprintf(gt, "{\"done\": true, \"calls\": %ld}\n", gt_calls);
		gt_closed = true;
		fflush(gt);
		pthread_mutex_unlock(&gt_mu);
	}
	if (opt_linger)
		for (;;)
			pause(); /* the signal thread exits on SIGINT/SIGTERM */
	return 0;
}
