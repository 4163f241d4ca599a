/* What the glue's files share. */
#ifndef MOONWALL_GLUE_H
#define MOONWALL_GLUE_H

#include <stddef.h>

#include "lua.h"
#include "sandbox.h"

/* A fresh Lua state whose allocator reports failures to the memory guard. */
lua_State *moonwall_new_state(void);
/* The sandbox's standard library (stdlib.c). */
void moonwall_open_stdlib(lua_State *L);
/* Seed math.random from the host's entropy (stdlib.c). */
void moonwall_reseed_random(lua_State *L);
/* End the run: Lua ran out of memory (memory.c). */
_Noreturn void moonwall_memory_exhausted(void);
/* Copy bytes, or the string at `index`, into a list the host will read. */
void moonwall_copy_out(sandbox_list_u8_t *out, const char *bytes, size_t len);
void moonwall_copy_value(sandbox_list_u8_t *out, lua_State *L, int index);

#endif
