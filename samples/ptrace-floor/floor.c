/* The least a debugger stop costs on this machine: a child calls a function whose first
 * instruction (push rbp) carries an int3; the parent, its ptracer, does the least any
 * debugger must at each hit (wait, read the registers, carry out the push, write the
 * registers, continue) and nothing else. Prints one JSON line: microseconds per call
 * untraced and traced, the tracer and the child left where the scheduler puts them, then
 * both pinned to one CPU.
 *   ptrace-floor [CALLS]
 */
#define _GNU_SOURCE
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

volatile long sink;

__attribute__((noinline, naked)) void target(void)
{
	__asm__ volatile("push %rbp\n\tmov %rsp, %rbp\n\tincq sink(%rip)\n\tpop %rbp\n\tret\n");
}

static double now_us(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	sched_setaffinity(0, sizeof set, &set);
}

/* One run: CALLS calls in the child, traced or not; returns the child's us per call. */
static double run(long calls, int traced, int cpu)
{
	int fds[2];
	if (pipe(fds) != 0)
		exit(1);
	pid_t child = fork();
	if (child == 0) {
		if (cpu >= 0)
			pin(cpu);
		if (traced) {
			ptrace(PTRACE_TRACEME, 0, 0, 0);
			raise(SIGSTOP);
		}
		double t0 = now_us();
		for (long i = 0; i < calls; i++)
			target();
		double per_call = (now_us() - t0) / calls;
		if (write(fds[1], &per_call, sizeof per_call) != sizeof per_call)
			_exit(1);
		_exit(0);
	}
	int status;
	if (traced) {
		uintptr_t at = (uintptr_t)target;
		waitpid(child, &status, 0);
		long word = ptrace(PTRACE_PEEKTEXT, child, at, 0);
		ptrace(PTRACE_POKETEXT, child, at, (word & ~0xffL) | 0xcc);
		ptrace(PTRACE_CONT, child, 0, 0);
		for (;;) {
			if (waitpid(child, &status, 0) < 0 || WIFEXITED(status) || WIFSIGNALED(status))
				break;
			if (WSTOPSIG(status) != SIGTRAP) {
				ptrace(PTRACE_CONT, child, 0, WSTOPSIG(status));
				continue;
			}
			struct user_regs_struct r;
			ptrace(PTRACE_GETREGS, child, 0, &r);
			r.rsp -= 8; /* push rbp, carried out here: one stop per hit */
			ptrace(PTRACE_POKEDATA, child, r.rsp, r.rbp);
			r.rip = at + 1;
			ptrace(PTRACE_SETREGS, child, 0, &r);
			ptrace(PTRACE_CONT, child, 0, 0);
		}
	} else {
		waitpid(child, &status, 0);
	}
	double per_call = -1;
	if (read(fds[0], &per_call, sizeof per_call) != sizeof per_call)
		per_call = -1;
	close(fds[0]);
	close(fds[1]);
	return per_call;
}

int main(int argc, char **argv)
{
	long calls = argc > 1 ? atol(argv[1]) : 20000;
	double bare = run(calls, 0, -1);
	double apart = run(calls, 1, -1);
	pin(0);
	double together = run(calls, 1, 0);
	printf("{\"calls\": %ld, \"untraced_us\": %.3f, \"stop_us\": %.3f, \"stop_same_cpu_us\": %.3f}\n",
	       calls, bare, apart - bare, together - bare);
	return 0;
}
