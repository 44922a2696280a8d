/* memwalk: a bare-metal multiboot guest that keeps walking its RAM and
 * checks that every page still holds what it last wrote there. swapcopy's
 * tests and benchmarks run it inside QEMU while its memory is migrated:
 * any page that comes back wrong (zeros, another page, a stale copy) is
 * reported on COM1 and the guest stops, so a log with PASS lines and no
 * ERROR line is proof that the memory survived. See README.md. */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PAGE_SIZE 4096u
#define PAGE_WORDS (PAGE_SIZE / 4u)
/* The image is loaded at 1 MiB and ends well below 2 MiB (memwalk.ld
 * asserts it); the multiboot info QEMU passes sits just after the image. */
#define WALK_BASE 0x200000u
/* Without a memory map, stay clear of what the firmware may keep at the
 * top of RAM (SeaBIOS puts its tables there). */
#define NO_MMAP_MARGIN 0x100000u

#define MB_BOOT_MAGIC 0x2BADB002u
#define MB_INFO_MEMORY (1u << 0)
#define MB_INFO_CMDLINE (1u << 2)
#define MB_INFO_MMAP (1u << 6)
#define MB_MMAP_AVAILABLE 1u

/* The signature of a page depends on its frame number only, so a page that
 * holds another page's data, zeros or a foreign marker is caught. */
#define SIG_MULT 0x9E3779B9u
#define SIG_SEED 0x5EEDu
/* Step between consecutive signature words of one page (FNV prime). */
#define SIG_STEP 0x01000193u

#define COM1 0x3F8

struct mb_info {
    uint32_t flags;
    uint32_t mem_lower;
    uint32_t mem_upper;
    uint32_t boot_device;
    uint32_t cmdline;
    uint32_t mods_count;
    uint32_t mods_addr;
    uint32_t syms[4];
    uint32_t mmap_length;
    uint32_t mmap_addr;
};

struct mb_mmap_entry {
    uint32_t size; /* of the rest of the entry, not counting this field */
    uint64_t addr;
    uint64_t len;
    uint32_t type;
} __attribute__((packed));

enum check_mode { CHECK_FULL, CHECK_SPARSE };

struct options {
    uint32_t walk_mib; /* 0: all RAM above WALK_BASE */
    uint32_t hot_mib;  /* 0: the whole walked range is hot */
    uint32_t cold_every;
    enum check_mode check;
};

void memwalk_main(uint32_t magic, const struct mb_info *mbi);

/* ---- COM1 ---------------------------------------------------------- */

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0, %1" : : "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
    return v;
}

static void serial_init(void)
{
    outb(COM1 + 1, 0x00); /* no interrupts: we poll */
    outb(COM1 + 3, 0x80); /* DLAB on to set the divisor */
    outb(COM1 + 0, 0x01); /* 115200 baud */
    outb(COM1 + 1, 0x00);
    outb(COM1 + 3, 0x03); /* 8N1, DLAB off */
    outb(COM1 + 2, 0xC7); /* FIFOs on and cleared */
}

static void put_char(char c)
{
    while (!(inb(COM1 + 5) & 0x20)) /* transmit holding register empty */
        ;
    outb(COM1, (uint8_t)c);
}

static void put_str(const char *s)
{
    while (*s)
        put_char(*s++);
}

static void put_dec(uint32_t v)
{
    char buf[11];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10u);
        v /= 10u;
    } while (v);
    while (n)
        put_char(buf[--n]);
}

static void put_hex(uint32_t v)
{
    put_str("0x");
    for (int shift = 28; shift >= 0; shift -= 4)
        put_char("0123456789abcdef"[(v >> shift) & 0xFu]);
}

static __attribute__((noreturn)) void halt(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

static __attribute__((noreturn)) void fatal(const char *what, const char *detail)
{
    put_str("FATAL ");
    put_str(what);
    if (detail) {
        put_str(": ");
        put_str(detail);
    }
    put_char('\n');
    halt();
}

/* ---- command line --------------------------------------------------- */

static bool parse_u32(const char *s, const char *end, uint32_t *out)
{
    uint32_t v = 0;
    if (s == end)
        return false;
    for (; s < end; s++) {
        if (*s < '0' || *s > '9' || v > 429496728u)
            return false;
        v = v * 10u + (uint32_t)(*s - '0');
    }
    *out = v;
    return true;
}

static bool token_is(const char *s, const char *end, const char *word)
{
    while (s < end && *word && *s == *word) {
        s++;
        word++;
    }
    return s == end && !*word;
}

/* Print the offending token as part of the FATAL line and stop. */
static __attribute__((noreturn)) void bad_option(const char *tok, const char *end,
                                                 const char *why)
{
    put_str("FATAL bad option '");
    while (tok < end)
        put_char(*tok++);
    put_str("': ");
    put_str(why);
    put_char('\n');
    halt();
}

/* Tokens without '=' (QEMU passes the kernel's path first) are ignored;
 * an unknown or malformed key=value stops the guest so a typo in a test
 * never silently walks the wrong amount of memory. */
static void parse_cmdline(const char *p, struct options *o)
{
    while (*p) {
        while (*p == ' ')
            p++;
        const char *tok = p;
        while (*p && *p != ' ')
            p++;
        const char *end = p, *eq = tok;
        while (eq < end && *eq != '=')
            eq++;
        if (eq == end)
            continue;
        const char *val = eq + 1;
        uint32_t *num = NULL;
        if (token_is(tok, eq, "walk_mib"))
            num = &o->walk_mib;
        else if (token_is(tok, eq, "hot_mib"))
            num = &o->hot_mib;
        else if (token_is(tok, eq, "cold_every"))
            num = &o->cold_every;
        else if (token_is(tok, eq, "check")) {
            if (token_is(val, end, "full"))
                o->check = CHECK_FULL;
            else if (token_is(val, end, "sparse"))
                o->check = CHECK_SPARSE;
            else
                bad_option(tok, end, "check must be full or sparse");
            continue;
        } else
            bad_option(tok, end, "known options are walk_mib, hot_mib, check, cold_every");
        if (!parse_u32(val, end, num) || *num == 0)
            bad_option(tok, end, "value must be a positive decimal number");
    }
}

/* ---- memory --------------------------------------------------------- */

/* End (exclusive) of the RAM block that holds WALK_BASE, below 4 GiB. */
static uint32_t ram_end(const struct mb_info *mbi)
{
    if (mbi->flags & MB_INFO_MMAP) {
        uint32_t p = mbi->mmap_addr, stop = mbi->mmap_addr + mbi->mmap_length;
        while (p < stop) {
            const struct mb_mmap_entry *e = (const struct mb_mmap_entry *)p;
            uint64_t end = e->addr + e->len;
            if (e->type == MB_MMAP_AVAILABLE && e->addr <= WALK_BASE && end > WALK_BASE)
                return end > 0xFFFFF000ull ? 0xFFFFF000u : (uint32_t)end;
            p += e->size + 4u;
        }
        fatal("no available RAM at 2 MiB in the multiboot memory map", NULL);
    }
    if (mbi->flags & MB_INFO_MEMORY) {
        uint64_t end = 0x100000ull + (uint64_t)mbi->mem_upper * 1024u;
        if (end > 0xFFFFF000ull)
            end = 0xFFFFF000ull;
        if (end < WALK_BASE + NO_MMAP_MARGIN)
            fatal("too little RAM", "need more than 3 MiB");
        return (uint32_t)end - NO_MMAP_MARGIN;
    }
    fatal("the loader passed neither a memory map nor mem_upper", NULL);
}

static inline uint32_t page_sig(uint32_t pfn)
{
    return (pfn * SIG_MULT) ^ SIG_SEED;
}

/* Word 0 is the pass counter; words 1..1023 are sig, sig+STEP, ... */
static void init_page(uint32_t pfn)
{
    volatile uint32_t *w = (volatile uint32_t *)(pfn * PAGE_SIZE);
    uint32_t e = page_sig(pfn);
    w[0] = 1;
    for (uint32_t i = 1; i < PAGE_WORDS; i++, e += SIG_STEP)
        w[i] = e;
}

static __attribute__((noreturn)) void report(uint32_t pass, uint32_t pfn, uint32_t word,
                                             uint32_t expected, uint32_t got)
{
    put_str("ERROR pass=");
    put_dec(pass);
    put_str(" page=");
    put_dec(pfn);
    put_str(" addr=");
    put_hex(pfn * PAGE_SIZE + word * 4u);
    put_str(" expected=");
    put_hex(expected);
    put_str(" got=");
    put_hex(got);
    put_char('\n');
    halt();
}

/* Checks the page; halts with an ERROR line on the first wrong word.
 * Sparse mode reads the counter and three words spread over the page
 * (offsets 4, 2048, 4092); full mode reads every word. */
static void check_page(uint32_t pass, uint32_t pfn, uint32_t counter, enum check_mode mode)
{
    volatile uint32_t *w = (volatile uint32_t *)(pfn * PAGE_SIZE);
    uint32_t sig = page_sig(pfn), got;
    if ((got = w[0]) != counter)
        report(pass, pfn, 0, counter, got);
    if (mode == CHECK_SPARSE) {
        static const uint32_t idx[] = { 1, PAGE_WORDS / 2, PAGE_WORDS - 1 };
        for (unsigned k = 0; k < sizeof idx / sizeof idx[0]; k++) {
            uint32_t e = sig + (idx[k] - 1u) * SIG_STEP;
            if ((got = w[idx[k]]) != e)
                report(pass, pfn, idx[k], e, got);
        }
        return;
    }
    uint32_t e = sig;
    for (uint32_t i = 1; i < PAGE_WORDS; i++, e += SIG_STEP)
        if ((got = w[i]) != e)
            report(pass, pfn, i, e, got);
}

void memwalk_main(uint32_t magic, const struct mb_info *mbi)
{
    struct options opt = { 0, 0, 0, CHECK_FULL };

    serial_init();
    if (magic != MB_BOOT_MAGIC)
        fatal("not started by a multiboot loader", "boot with qemu -kernel memwalk.elf");
    if (mbi->flags & MB_INFO_CMDLINE)
        parse_cmdline((const char *)mbi->cmdline, &opt);

    uint32_t first = WALK_BASE / PAGE_SIZE;
    uint32_t avail = ram_end(mbi) / PAGE_SIZE - first;
    uint32_t pages = avail, hot;
    if (opt.walk_mib) {
        if (opt.walk_mib > avail / 256u)
            fatal("walk_mib is larger than the RAM above 2 MiB", "give QEMU more -m");
        pages = opt.walk_mib * 256u;
    }
    hot = pages;
    if (opt.hot_mib) {
        if (opt.hot_mib > pages / 256u)
            fatal("hot_mib is larger than the walked memory", "lower hot_mib");
        hot = opt.hot_mib * 256u;
    }

    put_str("MEMWALK start pages=");
    put_dec(pages);
    put_str(" base=");
    put_hex(WALK_BASE);
    put_str(" end=");
    put_hex(WALK_BASE + pages * PAGE_SIZE);
    put_str(" hot=");
    put_dec(hot);
    put_str(" check=");
    put_str(opt.check == CHECK_FULL ? "full" : "sparse");
    put_str(" cold_every=");
    put_dec(opt.cold_every);
    put_char('\n');

    for (uint32_t i = 0; i < pages; i++)
        init_page(first + i);
    put_str("PASS 0\n");

    for (uint32_t pass = 1;; pass++) {
        for (uint32_t i = 0; i < hot; i++) {
            uint32_t pfn = first + i;
            check_page(pass, pfn, pass, opt.check);
            *(volatile uint32_t *)(pfn * PAGE_SIZE) = pass + 1u;
        }
        /* Cold pages were written once, in pass 0, and only ever read. */
        if (opt.cold_every && hot < pages && pass % opt.cold_every == 0) {
            for (uint32_t i = hot; i < pages; i++)
                check_page(pass, first + i, 1, opt.check);
            put_str("COLD pass=");
            put_dec(pass);
            put_str(" pages=");
            put_dec(pages - hot);
            put_char('\n');
        }
        put_str("PASS ");
        put_dec(pass);
        put_char('\n');
    }
}
