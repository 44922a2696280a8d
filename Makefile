# swapcopy top-level build. Settings come from config.mk (./configure); on a
# fresh clone the first 'make' installs missing Debian packages (as root) and
# runs ./configure itself.

-include config.mk

BUILDDIR ?= build
PREFIX ?= /usr/local
SANITIZERS ?= no
B := $(BUILDDIR)

CC ?= cc
WARN := -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes
BASE_CFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) -pthread -MMD -MP
ifeq ($(SANITIZERS),yes)
BASE_CFLAGS += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
BASE_LDFLAGS += -fsanitize=address,undefined
endif
ifeq ($(SANITIZERS),thread)
BASE_CFLAGS += -fsanitize=thread -fno-omit-frame-pointer -DSWAPCOPY_TSAN -include nbd-pagesrv/tsan-glib.h
BASE_LDFLAGS += -fsanitize=thread
endif
ALL_CFLAGS = $(BASE_CFLAGS) $(DEPS_CFLAGS) -Iinclude -Iswapstub $(CFLAGS)
ALL_LDFLAGS = $(BASE_LDFLAGS) -pthread $(LDFLAGS)
LIBS = $(DEPS_LIBS)

# nbd-pagesrv: every .c in nbd-pagesrv/ except the small control client.
PAGESRV_SRCS := $(filter-out nbd-pagesrv/pagesrv-ctl.c,$(wildcard nbd-pagesrv/*.c))
PAGESRV_OBJS := $(PAGESRV_SRCS:%.c=$(B)/obj/%.o)
# libswapstub and the swapstub command.
SWAPSTUB_SRCS := $(filter-out swapstub/swapstub-cli.c,$(wildcard swapstub/*.c))
SWAPSTUB_OBJS := $(SWAPSTUB_SRCS:%.c=$(B)/obj/%.o)
LIBSWAPSTUB := $(B)/libswapstub.a
# Test and benchmark programs: one .c file each.
TEST_PROGS := $(patsubst tests/progs/%.c,$(B)/tests/%,$(wildcard tests/progs/*.c))
BENCH_PROGS := $(patsubst bench/%.c,$(B)/bench/%,$(wildcard bench/*.c))

PROGRAMS := $(B)/nbd-pagesrv $(B)/pagesrv-ctl $(B)/swapstub $(B)/swapcopy-handoff
# Loaded into nbdfuse by scripts/lib/blockdev.sh. Built without sanitizers
# whatever the configuration: it runs inside a program that has none.
SWAP_SAFE_PRELOAD := $(B)/swap-safe-preload.so

# The test guest: a 32-bit freestanding multiboot image (guest/README.md).
# Built without sanitizers whatever the configuration: it runs in a VM.
GUEST_ELF := $(B)/guest/memwalk.elf
GUEST_CFLAGS := -std=c11 -m32 -march=i686 -mgeneral-regs-only -ffreestanding -fno-pic -fno-pie \
	-fno-stack-protector -fno-asynchronous-unwind-tables -fno-tree-loop-distribute-patterns \
	-O2 -g -Wall -Wextra -Werror

# Keep objects of the pattern-built programs between runs.
.SECONDARY:

.PHONY: all deps check check-sanitizers check-tsan fuzz fuzz-build demo demo-swap bench qemu kernel install clean distclean
all: $(PROGRAMS) $(LIBSWAPSTUB) $(TEST_PROGS) $(BENCH_PROGS) $(GUEST_ELF) $(SWAP_SAFE_PRELOAD) \
	$(B)/scripts-compiled

# swapcopy-migrate's Python modules, compiled ahead into scripts/__pycache__:
# Python reads the bytecode there even where PYTHONDONTWRITEBYTECODE keeps it
# from writing any, and compiling them on every run cost ~30 ms between the
# operator's command and the switch. The interpreter is the scripts' own.
SCRIPTS_PYTHON ?= /usr/bin/python3
$(B)/scripts-compiled: $(wildcard scripts/*.py)
	@mkdir -p $(dir $@)
	$(SCRIPTS_PYTHON) -m compileall -q scripts
	@touch $@

config.mk: configure scripts/install-deps.sh
	sh scripts/install-deps.sh
	./configure

deps:
	sh scripts/install-deps.sh

$(B)/obj/%.o: %.c config.mk
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c -o $@ $<

$(SWAP_SAFE_PRELOAD): nbd-pagesrv/preload/swap-safe-preload.c config.mk
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -D_GNU_SOURCE -O2 -g $(WARN) -fPIC -shared -o $@ $<

$(B)/nbd-pagesrv: $(PAGESRV_OBJS)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(B)/pagesrv-ctl: $(B)/obj/nbd-pagesrv/pagesrv-ctl.o
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# Small on purpose: no library beyond libc, so it starts in a millisecond.
$(B)/swapcopy-handoff: $(B)/obj/handoff/swapcopy-handoff.o
	$(CC) $(ALL_LDFLAGS) -o $@ $^

$(B)/guest/%.o: guest/%.S
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<

$(B)/guest/%.o: guest/%.c
	@mkdir -p $(dir $@)
	$(CC) $(GUEST_CFLAGS) -c -o $@ $<

$(GUEST_ELF): $(B)/guest/boot.o $(B)/guest/memwalk.o guest/memwalk.ld
	ld -m elf_i386 -n --fatal-warnings -T guest/memwalk.ld -o $@ $(B)/guest/boot.o $(B)/guest/memwalk.o

$(LIBSWAPSTUB): $(SWAPSTUB_OBJS)
	rm -f $@
	ar rcs $@ $^

$(B)/swapstub: $(B)/obj/swapstub/swapstub-cli.o $(LIBSWAPSTUB)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(B)/tests/%: $(B)/obj/tests/progs/%.o $(LIBSWAPSTUB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

$(B)/bench/%: $(B)/obj/bench/%.o $(LIBSWAPSTUB)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(LIBS)

# The whole suite; its last line is the summary 'N passed, N failed'.
check: all
	SWAPCOPY_BUILD=$(abspath $(B)) SUMMARY_LABEL=$(SUMMARY_LABEL) tests/run.sh

# The same suite built with ASan/UBSan, in its own build directory.
# fast_unwind_on_malloc=0: GLib has no frame pointers, and a leak report
# that stops at g_malloc says nothing.
# Left out here, run with the plain build in 'make check': tests/vm.bats
# (an ASan daemon inside a TCG VM once lost its kernel nbd connection
# mid-run) and tests/qemu-patched.bats (with an ASan daemon behind it, the
# patched destination QEMU once took a SIGBUS, i.e. a failed swap-in, in
# the memwalk test). The likely cause of the second, an ASan daemon running
# with its memory unlocked (ASan ignores mlockall) while the host pages out
# cold memory to the top-priority swap device, is fixed; it has not been
# re-run enough under ASan to bring the file back here. The same daemon
# code runs under ASan on the host in e2e, pull and qemu-stock.
# tests/kernel-patch.bats: a VM test like vm.bats (same concern), and a
# second run would add its VM time again; libswapstub's arming code is
# the same in both builds. tests/many-vms.bats and tests/two-hosts.bats:
# eight QEMUs, or two network namespaces, around the same daemon code
# that concurrent, e2e and pull run under ASan; a second run would add
# two minutes of CI for QEMU's time, not the daemons'.
SANITIZER_TESTS := $(filter-out tests/vm.bats tests/qemu-patched.bats tests/kernel-patch.bats \
                     tests/many-vms.bats tests/two-hosts.bats,$(wildcard tests/*.bats))
check-sanitizers:
	ASAN_OPTIONS=fast_unwind_on_malloc=0:malloc_context_size=20 \
	$(MAKE) BUILDDIR=build-san SANITIZERS=yes SUMMARY_LABEL=sanitizers: \
		TESTS="$(or $(TESTS),$(SANITIZER_TESTS))" check

# libFuzzer harnesses (tests/fuzz/): nbd-pagesrv's handshake and request
# parsers before a source export and before the destination's page store,
# and the control-line parser; built with clang's fuzzer runtime and
# ASan + UBSan in build-fuzz/. 'make fuzz' runs each for FUZZ_SECONDS on
# a working corpus seeded from tests/fuzz/corpus/NAME and fails on the
# first crash, leak, hang (-timeout) or sanitizer report; the input that
# did it is left in build-fuzz/artifacts/.
FUZZ_SECONDS ?= 60
FUZZ_CC ?= clang-14
FB := build-fuzz
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -O1 -g $(WARN) -pthread -fno-omit-frame-pointer \
	-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all \
	$(DEPS_CFLAGS) -Iinclude -iquote nbd-pagesrv
FUZZ_OBJS := $(patsubst %.c,$(FB)/obj/%.o,$(filter-out nbd-pagesrv/main.c,$(PAGESRV_SRCS)))
FUZZERS := $(patsubst tests/fuzz/%.c,$(FB)/%,$(wildcard tests/fuzz/fuzz-*.c))

$(FB)/obj/%.o: %.c config.mk
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -MMD -MP -c -o $@ $<

$(FB)/fuzz-%: $(FB)/obj/tests/fuzz/fuzz-%.o $(FUZZ_OBJS)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -pthread -o $@ $^ $(LIBS)

fuzz-build: $(FUZZERS)

fuzz: $(FUZZERS)
	@mkdir -p $(FB)/artifacts
	@set -e; for f in $(FUZZERS); do \
	    n=$$(basename $$f); dict=tests/fuzz/$$n.dict; \
	    [ -f $$dict ] || dict=tests/fuzz/nbd.dict; \
	    mkdir -p $(FB)/corpus/$$n; \
	    echo "== $$n: $(FUZZ_SECONDS) s"; \
	    ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
	    $$f -max_total_time=$(FUZZ_SECONDS) -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
	        -print_final_stats=1 -dict=$$dict -artifact_prefix=$(FB)/artifacts/$$n- \
	        $(FB)/corpus/$$n tests/fuzz/corpus/$$n 2>$(FB)/$$n.log \
	      || { tail -n 60 $(FB)/$$n.log; echo "fuzz: $$n failed; the input is in $(FB)/artifacts/"; exit 1; }; \
	    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb)|cov: ' $(FB)/$$n.log | tail -n 3; \
	done

# nbd-pagesrv's threaded core under ThreadSanitizer (build-tsan/): the
# suites that drive it through real NBD traffic, real processes and
# libnbd, without the kernel's swap path. Any race report aborts the
# daemon (halt_on_error), which fails its test. GLib's futex-based locks
# are made visible to TSan by nbd-pagesrv/tsan-glib.h, and GSlice (which
# hands memory between threads under its own futex locks) is turned into
# plain malloc with G_SLICE=always-malloc; tests/tsan.supp
# lists what is suppressed in uninstrumented libraries. TSan's deadlock
# detector is off: it cannot hold more than 64 locks per thread, and a
# TRIM takes every slot-lock stripe of the page store at once. Left out: the suites that
# put a TSan daemon under the kernel's swap path (e2e, kernel-swap,
# setup-swap, the QEMU and VM ones): TSan's shadow memory is several times
# the process's and every access costs 5-15 times as much, so a swap server
# built with it answers the kernel too late and is itself a target of the
# host's paging; the code they run is the code pull.bats runs, through
# nbdfuse and libnbd instead of the kernel. tests/fuse-front.bats drives
# nbd-pagesrv's own FUSE file (libfuse's threads into the page store)
# without swap. tests/limits.bats measures
# resident memory, which TSan's shadow makes meaningless.
TSAN_TESTS := tests/protocol.bats tests/pull.bats tests/local-access.bats tests/tls.bats \
              tests/fuse-front.bats
check-tsan:
	G_SLICE=always-malloc \
	TSAN_OPTIONS="halt_on_error=1 abort_on_error=1 history_size=4 detect_deadlocks=0 suppressions=$(abspath tests/tsan.supp)" \
	$(MAKE) BUILDDIR=build-tsan SANITIZERS=thread SUMMARY_LABEL=tsan: \
		TESTS="$(or $(TESTS),$(TSAN_TESTS))" check

demo: all
	SWAPCOPY_BUILD=$(abspath $(B)) scripts/demo.sh

# Debian's QEMU 7.2 with qemu-patches/ (cached under /var/cache/swapcopy/qemu).
qemu: $(LIBSWAPSTUB)
	qemu-patches/build.sh

# Debian's linux-source-6.1 with mm-patch-madvise (MADV_SWAPSTUB), a
# tinyconfig kernel for tests/vm/run --kernel (cached under
# /var/cache/swapcopy/kernel; ~10 min on 2 cores the first time). Prints
# the bzImage's path last.
kernel:
	mm-patch-madvise/build.sh

# The swap device alone: a region paged out to nbd-pagesrv and back.
demo-swap: all
	SWAPCOPY_BUILD=$(abspath $(B)) scripts/demo-swap.sh

bench: all
	SWAPCOPY_BUILD=$(abspath $(B)) bench/run-all.sh

install: $(PROGRAMS) $(LIBSWAPSTUB) $(SWAP_SAFE_PRELOAD)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/libexec/swapcopy/lib
	install -m 755 $(PROGRAMS) $(DESTDIR)$(PREFIX)/bin/
	install -m 755 scripts/*.sh $(DESTDIR)$(PREFIX)/libexec/swapcopy/
	install -m 644 scripts/lib/*.sh $(DESTDIR)$(PREFIX)/libexec/swapcopy/lib/
	install -m 755 $(SWAP_SAFE_PRELOAD) $(DESTDIR)$(PREFIX)/libexec/swapcopy/
	install -d $(DESTDIR)$(PREFIX)/lib $(DESTDIR)$(PREFIX)/include
	install -m 644 $(LIBSWAPSTUB) $(DESTDIR)$(PREFIX)/lib/
	install -m 644 swapstub/swapstub.h $(DESTDIR)$(PREFIX)/include/

clean:
	rm -rf build build-san build-fuzz scripts/__pycache__

distclean: clean
	rm -f config.mk

-include $(shell find $(B) $(FB) -name '*.d' 2>/dev/null)
