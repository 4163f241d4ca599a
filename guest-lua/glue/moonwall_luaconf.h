/*
 * Force-included (clang -include) into every Lua source file. It changes Lua
 * only through the hooks Lua itself offers (macros that Lua defines only when
 * they are not already defined); the Lua sources are used as released.
 */
#ifndef MOONWALL_LUACONF_H
#define MOONWALL_LUACONF_H

#include <stddef.h>

/* Output: `print` and Lua's warnings go to the host (glue/output.c). */
void moonwall_write_stdout(const char *bytes, size_t len);
void moonwall_write_stderr_fmt(const char *fmt, const char *arg);
#define lua_writestring(s, l) moonwall_write_stdout((s), (l))
#define lua_writeline() moonwall_write_stdout("\n", 1)
#define lua_writestringerror(s, p) moonwall_write_stderr_fmt((s), (p))

/* The string-hash seed comes from the host's entropy, not from the clock. */
unsigned int moonwall_hash_seed(void);
#define luai_makeseed(L) moonwall_hash_seed()
/* table.sort's pivot randomisation, likewise. */
#define l_randomizePivot() moonwall_hash_seed()

/*
 * Lua raises LUA_ERRMEM when an allocation fails even after an emergency
 * collection. Such an error must end the run, not be caught by pcall, a
 * coroutine or a finalizer: every throw passes here, and a memory error that
 * follows a failed allocation is handed to the host, which stops the
 * instance (glue/memory.c).
 */
_Noreturn void moonwall_memory_exhausted(void);
int moonwall_allocation_failed(void);
#define LUAI_THROW(L, c)                                                       \
  do {                                                                         \
    if ((c)->status == LUA_ERRMEM && moonwall_allocation_failed())             \
      moonwall_memory_exhausted();                                             \
    longjmp((c)->b, 1);                                                        \
  } while (0)
#define LUAI_TRY(L, c, a)                                                      \
  if (setjmp((c)->b) == 0) {                                                   \
    a                                                                          \
  }
#define luai_jmpbuf jmp_buf

/* No signals in the guest: a plain int is the hook-mask type. */
#define l_signalT int

#endif
