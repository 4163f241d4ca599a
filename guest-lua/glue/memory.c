/*
 * Lua's allocator and the memory guard.
 *
 * The host caps the guest's linear memory: past the cap, memory.grow fails
 * and malloc returns NULL. Lua then collects garbage in an emergency and
 * retries; if the retry fails too it raises LUA_ERRMEM, which pcall could
 * catch. moonwall_luaconf.h hooks every throw: a LUA_ERRMEM thrown right
 * after an allocation really failed ends the run through the host instead
 * (moonwall_memory_exhausted), so no Lua code can catch running out of memory.
 *
 * A LUA_ERRMEM that follows no failed allocation is a script's own
 * `error("not enough memory")` (Lua turns that message into a memory error):
 * it stays an ordinary, catchable error, as in stock Lua.
 */
#include <stdlib.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

/* Did the most recent allocation request fail? Frees do not change it. */
static int last_allocation_failed;

void *moonwall_lua_alloc(void *ud, void *block, size_t old_size, size_t new_size) {
  (void)ud;
  (void)old_size;
  if (new_size == 0) {
    free(block);
    return NULL;
  }
  void *resized = realloc(block, new_size);
  last_allocation_failed = resized == NULL;
  return resized;
}

int moonwall_allocation_failed(void) { return last_allocation_failed; }

lua_State *moonwall_new_state(void) {
  lua_State *L = luaL_newstate();
  if (L == NULL)
    moonwall_memory_exhausted();
  /* luaL_newstate's allocator and ours share malloc; ours also records
   * failures for the memory guard. */
  lua_setallocf(L, moonwall_lua_alloc, NULL);
  return L;
}

_Noreturn void moonwall_memory_exhausted(void) {
  moonwall_sandbox_guard_memory_exhausted();
  /* The host never returns from that call; should it, stop here anyway. */
  __builtin_trap();
}

/* The canonical ABI's allocator, used for every list or string the host
 * hands to the guest. The generated bindings define a weak one that aborts
 * when malloc fails (a fault); this one ends the run as the memory limit,
 * like every other allocation that does not fit. */
__attribute__((__export_name__("cabi_realloc"))) void *cabi_realloc(void *ptr, size_t old_size,
                                                                      size_t align, size_t new_size) {
  (void)old_size;
  if (new_size == 0)
    return (void *)align;
  void *resized = realloc(ptr, new_size);
  if (resized == NULL)
    moonwall_memory_exhausted();
  return resized;
}
