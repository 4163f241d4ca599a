/*
 * The sandbox's standard library: what a script can name. docs/sandbox.md
 * explains each removal. This is convenience and clarity, not the security
 * boundary: the guest has no imports that reach processes, and files,
 * sockets and the environment only through the capability imports, which
 * the host checks against the tenant's grants on every call.
 *
 *   base       without dofile and loadfile; load accepts source text only
 *   string     string.dump raises an error (no bytecode out, none in)
 *   table, math, utf8, coroutine
 *   os         time, clock, date, difftime only
 *   debug      traceback only
 *   print      to the run's output, one host write per call
 *   require    built-in modules, and the tenant's lib_dirs (modules.c)
 *   io         read-only, in the tenant's read_dirs (files.c)
 *   not here   the rest of debug; collectgarbage stays
 */
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "glue.h"
#include "sandbox.h"

void moonwall_write_stdout(const char *bytes, size_t len);

static const char BINARY_REFUSED[] =
    "binary chunks are not allowed in the moonwall sandbox (only Lua source text is loaded)";

/* load(chunk [, chunkname [, mode [, env]]]) with mode forced to "t". */
static int sandbox_load(lua_State *L) {
  /* Check the arguments here, as Lua's load does, so that errors name 'load'. */
  if (!lua_isstring(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  luaL_optstring(L, 2, NULL);
  const char *mode = luaL_optstring(L, 3, "bt");
  size_t len;
  const char *text = lua_tolstring(L, 1, &len);
  int binary_text = text != NULL && lua_type(L, 1) == LUA_TSTRING && len > 0 && text[0] == LUA_SIGNATURE[0];
  if (strchr(mode, 't') == NULL || binary_text) {
    luaL_pushfail(L);
    lua_pushstring(L, BINARY_REFUSED);
    return 2;
  }
  if (lua_gettop(L) < 3)
    lua_settop(L, 3);
  lua_pushliteral(L, "t");
  lua_replace(L, 3);
  /* The original `load` is this closure's upvalue. */
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, LUA_MULTRET);
  return lua_gettop(L);
}

static int sandbox_string_dump(lua_State *L) {
  return luaL_error(L, "string.dump is not available in the moonwall sandbox "
                       "(binary chunks cannot be loaded back either)");
}

/* print(...): like Lua's, but the whole line goes out in one host write. */
static int sandbox_print(lua_State *L) {
  int n = lua_gettop(L);
  luaL_Buffer buffer;
  luaL_buffinit(L, &buffer);
  for (int i = 1; i <= n; i++) {
    if (i > 1)
      luaL_addchar(&buffer, '\t');
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&buffer);
  }
  luaL_addchar(&buffer, '\n');
  luaL_pushresult(&buffer);
  size_t len;
  const char *line = lua_tolstring(L, -1, &len);
  moonwall_write_stdout(line, len);
  return 0;
}

/* debug.traceback([thread,] [message [, level]]), as in Lua's debug library. */
static int sandbox_traceback(lua_State *L) {
  lua_State *target = L;
  int arg = 0;
  if (lua_isthread(L, 1)) {
    target = lua_tothread(L, 1);
    arg = 1;
  }
  const char *message = lua_tostring(L, arg + 1);
  if (message == NULL && !lua_isnoneornil(L, arg + 1)) {
    lua_pushvalue(L, arg + 1); /* a non-string message is returned untouched */
  } else {
    int level = (int)luaL_optinteger(L, arg + 2, target == L ? 1 : 0);
    luaL_traceback(L, target, message, level);
  }
  return 1;
}

/* os.clock(): seconds since the run started. (The os library's own version
 * is disabled for WASI in the sources we build from.) */
static int sandbox_os_clock(lua_State *L) {
  lua_pushnumber(L, (lua_Number)moonwall_sandbox_clock_run_ns() / 1e9);
  return 1;
}

/* Keep only `keep` in the table at the top of the stack. */
static void keep_only(lua_State *L, const char *const keep[]) {
  lua_newtable(L);
  for (int i = 0; keep[i] != NULL; i++) {
    lua_getfield(L, -2, keep[i]);
    lua_setfield(L, -2, keep[i]);
  }
}

/* Seed math.random from the host's entropy. Lua seeds it from the clock and
 * an address, which inside a fresh (or snapshotted) instance repeat. */
void moonwall_reseed_random(lua_State *L) {
  lua_getglobal(L, LUA_MATHLIBNAME);
  if (lua_getfield(L, -1, "randomseed") == LUA_TFUNCTION) {
    lua_pushinteger(L, (lua_Integer)moonwall_sandbox_clock_random_seed());
    lua_pushinteger(L, (lua_Integer)moonwall_sandbox_clock_random_seed());
    lua_call(L, 2, 0);
  } else {
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

void moonwall_open_stdlib(lua_State *L) {
  static const luaL_Reg libraries[] = {
      {LUA_GNAME, luaopen_base},         {LUA_COLIBNAME, luaopen_coroutine},
      {LUA_TABLIBNAME, luaopen_table},   {LUA_OSLIBNAME, luaopen_os},
      {LUA_STRLIBNAME, luaopen_string},  {LUA_MATHLIBNAME, luaopen_math},
      {LUA_UTF8LIBNAME, luaopen_utf8},   {NULL, NULL},
  };
  for (const luaL_Reg *lib = libraries; lib->func != NULL; lib++) {
    luaL_requiref(L, lib->name, lib->func, 1);
    lua_pop(L, 1);
  }

  lua_pushglobaltable(L);
  lua_pushnil(L);
  lua_setfield(L, -2, "dofile");
  lua_pushnil(L);
  lua_setfield(L, -2, "loadfile");
  lua_getfield(L, -1, "load");
  lua_pushcclosure(L, sandbox_load, 1);
  lua_setfield(L, -2, "load");
  lua_pushcfunction(L, sandbox_print);
  lua_setfield(L, -2, "print");

  lua_getfield(L, -1, LUA_STRLIBNAME);
  lua_pushcfunction(L, sandbox_string_dump);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);

  /* os: a new table with the four pure functions, also in package.loaded. */
  static const char *const os_kept[] = {"time", "clock", "date", "difftime", NULL};
  lua_getfield(L, -1, LUA_OSLIBNAME);
  keep_only(L, os_kept);
  lua_remove(L, -2);
  lua_pushcfunction(L, sandbox_os_clock);
  lua_setfield(L, -2, "clock");
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, LUA_OSLIBNAME);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_insert(L, -2);
  lua_setfield(L, -2, LUA_OSLIBNAME);
  lua_pop(L, 1);

  lua_newtable(L);
  lua_pushcfunction(L, sandbox_traceback);
  lua_setfield(L, -2, "traceback");
  lua_setfield(L, -2, LUA_DBLIBNAME);

  lua_pop(L, 1); /* the global table */
  moonwall_open_require(L);
  moonwall_open_io(L);
  moonwall_reseed_random(L);
}
