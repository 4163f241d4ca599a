/*
 * `require` and the modules built into the guest.
 *
 * A module is looked up, in order: in package.loaded; in package.preload;
 * among the built-in modules below; then in the tenant's lib directories,
 * which the host searches (files.c, wit/files.wit: only where the policy
 * grants `lib_dirs`, only Lua source text, which the host hands over
 * compiled when it can).
 *
 * A built-in module is Lua source embedded from lua/ (called with its name
 * and, when it has one, the table of C primitives it wraps), or C alone.
 */
#include <string.h>

#include "embedded_lua.h"
#include "glue.h"
#include "lauxlib.h"
#include "lua.h"

struct builtin {
  const char *name;
  const char *source; /* Lua source, or NULL for a C module */
  const size_t *source_len;
  lua_CFunction primitives; /* the C side: the module itself, or its primitives */
};

static const struct builtin BUILTINS[] = {
    {"cjson", NULL, NULL, moonwall_open_cjson},
    {"cjson.safe", NULL, NULL, moonwall_open_cjson_safe},
    {"ngx.re", moonwall_lua_ngx_re, &moonwall_lua_ngx_re_len, moonwall_open_regex},
    {"ngx.shared", moonwall_lua_ngx_shared, &moonwall_lua_ngx_shared_len, moonwall_open_shared_dict},
    {"ngx.socket", moonwall_lua_ngx_socket, &moonwall_lua_ngx_socket_len, moonwall_open_tcp},
    {"resty.http", moonwall_lua_resty_http, &moonwall_lua_resty_http_len, NULL},
    {"moonwall.tasks", moonwall_lua_tasks, &moonwall_lua_tasks_len, moonwall_open_tasks},
    {NULL, NULL, NULL, NULL},
};

/* Push the loader of built-in module `name` and its extra argument; 0 if
 * there is no such module. */
static int builtin_loader(lua_State *L, const char *name) {
  for (const struct builtin *b = BUILTINS; b->name != NULL; b++) {
    if (strcmp(b->name, name) != 0)
      continue;
    if (b->source == NULL) {
      lua_pushcfunction(L, b->primitives);
      lua_pushnil(L);
      return 1;
    }
    lua_pushfstring(L, "=%s", name);
    if (luaL_loadbufferx(L, b->source, *b->source_len, lua_tostring(L, -1), "t") != LUA_OK)
      lua_error(L); /* moonwall's own code: a build mistake */
    lua_remove(L, -2);
    if (b->primitives != NULL) {
      lua_pushcfunction(L, b->primitives);
      lua_call(L, 0, 1);
    } else {
      lua_pushnil(L);
    }
    return 1;
  }
  return 0;
}

/* require(name): as Lua's, with the searchers described above. */
static int sandbox_require(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  if (strlen(name) != len)
    return luaL_error(L, "module '%s' not found:\n\ta module name cannot contain a zero byte", name);
  lua_settop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE); /* 2 */
  if (lua_getfield(L, 2, name) != LUA_TNIL && lua_toboolean(L, -1))
    return 1;
  lua_pop(L, 1);
  /* 3: loader, 4: its extra argument */
  if (lua_getfield(L, lua_upvalueindex(1), name) != LUA_TNIL) {
    lua_pushliteral(L, ":preload:");
  } else {
    lua_pop(L, 1);
    if (!builtin_loader(L, name)) {
      /* files.c: pushes the loaded chunk and its file name, or returns 0
       * with the reason on the stack. */
      if (!moonwall_find_lib_module(L, name)) {
        return luaL_error(L, "module '%s' not found:\n\tno built-in module '%s'\n\t%s", name, name,
                          lua_tostring(L, -1));
      }
    }
  }
  lua_pushvalue(L, 3);
  lua_pushvalue(L, 1);
  lua_pushvalue(L, 4);
  lua_call(L, 2, 1); /* loader(name, extra) */
  if (!lua_isnil(L, -1))
    lua_setfield(L, 2, name);
  else
    lua_pop(L, 1);
  if (lua_getfield(L, 2, name) == LUA_TNIL) {
    lua_pushboolean(L, 1);
    lua_copy(L, -1, -2);
    lua_setfield(L, 2, name);
  }
  lua_rotate(L, -2, 1); /* the module, then the extra value */
  return 2;
}

void moonwall_open_require(lua_State *L) {
  lua_newtable(L); /* package */
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_setfield(L, -2, "loaded");
  lua_newtable(L);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "preload");
  lua_pushcclosure(L, sandbox_require, 1);
  lua_setglobal(L, "require");
  lua_setglobal(L, "package");
}
