/* What the glue's files share. */
#ifndef MOONWALL_GLUE_H
#define MOONWALL_GLUE_H

#include <stddef.h>
#include <stdint.h>

#include "lauxlib.h"
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

/* Return `nil, err` to Lua from an import's error, freeing it. */
static inline int moonwall_push_error(lua_State *L, sandbox_string_t *err) {
  lua_pushnil(L);
  lua_pushlstring(L, (const char *)err->ptr, err->len);
  sandbox_string_free(err);
  return 2;
}

/* The id (of a socket, an operation) at `index`: an integer that fits a u32. */
static inline uint32_t moonwall_check_id(lua_State *L, int index) {
  lua_Integer id = luaL_checkinteger(L, index);
  luaL_argcheck(L, id >= 0 && id <= 0xffffffffLL, index, "bad id");
  return (uint32_t)id;
}

/* The string argument at `index`, borrowed (not copied) for an import: it
 * stays alive on the Lua stack while the host reads it. */
static inline sandbox_list_u8_t moonwall_borrowed_bytes(lua_State *L, int index) {
  size_t len;
  const char *bytes = luaL_checklstring(L, index, &len);
  sandbox_list_u8_t list = {(uint8_t *)bytes, len};
  return list;
}

/* Push, as one Lua string, the header block (wit/http.wit, send-head) of
 * the `count` name/value pairs in the list at `table` ({name1, value1, ...},
 * all strings): for each, u32 little-endian name length, name, u32
 * little-endian value length, value. `prefix` starts its error messages. The
 * string stays on the stack while the host reads it (http.c). */
void moonwall_push_header_block(lua_State *L, int table, size_t count, const char *prefix);

/* `require` and the `package` table (modules.c). */
void moonwall_open_require(lua_State *L);

/* The C side of each built-in module (see modules.c): the module itself, or
 * the table of primitives its Lua side wraps. */
int moonwall_open_cjson(lua_State *L);      /* cjson.c */
int moonwall_open_cjson_safe(lua_State *L); /* cjson.c */
int moonwall_open_regex(lua_State *L);      /* regex.c */
int moonwall_open_shared_dict(lua_State *L); /* dict.c */
int moonwall_open_tcp(lua_State *L);        /* tcp.c */
int moonwall_open_tasks(lua_State *L);      /* tasks.c */
/* The io library and os.getenv, on the host's files and env (files.c). */
void moonwall_open_io(lua_State *L);
/* Find module `name` in the tenant's lib directories: push its loaded chunk
 * and file name and return 1, or push the reason and return 0 (files.c). */
int moonwall_find_lib_module(lua_State *L, const char *name);

#endif
