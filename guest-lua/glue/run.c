/*
 * The guest's export: run Lua chunks in one fresh state and report how it
 * ended. Limits (fuel, time, memory, stack, output) are not handled here: the
 * host enforces them by stopping the instance, which no Lua code can catch.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "sandbox.h"

#define TRACEBACK_KEY "moonwall.traceback"

typedef exports_moonwall_sandbox_script_outcome_t outcome_t;

struct run {
  exports_moonwall_sandbox_script_list_chunk_t *chunks;
  sandbox_list_string_t *args;
  outcome_t *outcome;
};

void moonwall_copy_out(sandbox_list_u8_t *out, const char *bytes, size_t len) {
  out->ptr = malloc(len > 0 ? len : 1);
  if (out->ptr == NULL)
    moonwall_memory_exhausted();
  memcpy(out->ptr, bytes, len);
  out->len = len;
}

void moonwall_copy_value(sandbox_list_u8_t *out, lua_State *L, int index) {
  size_t len = 0;
  const char *bytes = lua_tolstring(L, index, &len);
  if (bytes == NULL) {
    bytes = "(error object is not a string)";
    len = strlen(bytes);
  }
  moonwall_copy_out(out, bytes, len);
}

/* Message handler: turn the error into a string (as the lua command does) and
 * keep the traceback of where it was raised. */
static int message_handler(lua_State *L) {
  if (lua_tostring(L, 1) == NULL) {
    if (!(luaL_callmeta(L, 1, "__tostring") && lua_type(L, -1) == LUA_TSTRING))
      lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    lua_replace(L, 1);
    lua_settop(L, 1);
  }
  luaL_traceback(L, L, NULL, 1);
  lua_setfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  return 1;
}

static void record_runtime_error(lua_State *L, outcome_t *outcome) {
  outcome->tag = EXPORTS_MOONWALL_SANDBOX_SCRIPT_OUTCOME_RUNTIME_ERROR;
  moonwall_copy_value(&outcome->val.runtime_error.message, L, -1);
  lua_getfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
  if (lua_type(L, -1) == LUA_TSTRING)
    moonwall_copy_value(&outcome->val.runtime_error.traceback, L, -1);
  else
    moonwall_copy_out(&outcome->val.runtime_error.traceback, "", 0);
  lua_pop(L, 1);
}

/* A NUL-terminated copy of a WIT string, on the Lua stack. */
static const char *push_name(lua_State *L, const sandbox_string_t *name) {
  return lua_pushlstring(L, (const char *)name->ptr, name->len);
}

static int run_protected(lua_State *L) {
  struct run *run = lua_touserdata(L, 1);
  lua_settop(L, 0);
  moonwall_open_stdlib(L);

  size_t count = run->chunks->len;
  sandbox_list_string_t *args = run->args;

  /* The global `arg`, as the lua command sets it: arg[0] is the script. */
  lua_createtable(L, (int)args->len, 1);
  if (count > 0) {
    const sandbox_string_t *name = &run->chunks->ptr[count - 1].name;
    const char *script = push_name(L, name);
    if (script[0] == '@' || script[0] == '=')
      lua_pushstring(L, script + 1), lua_remove(L, -2);
    lua_rawseti(L, -2, 0);
  }
  for (size_t i = 0; i < args->len; i++) {
    lua_pushlstring(L, (const char *)args->ptr[i].ptr, args->ptr[i].len);
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  lua_setglobal(L, "arg");

  for (size_t c = 0; c < count; c++) {
    exports_moonwall_sandbox_script_chunk_t *chunk = &run->chunks->ptr[c];
    const char *name = push_name(L, &chunk->name);
    int status = luaL_loadbufferx(L, (const char *)chunk->source.ptr, chunk->source.len, name, "t");
    lua_remove(L, -2); /* the name */
    if (status != LUA_OK) {
      run->outcome->tag = EXPORTS_MOONWALL_SANDBOX_SCRIPT_OUTCOME_SYNTAX_ERROR;
      moonwall_copy_value(&run->outcome->val.syntax_error, L, -1);
      return 0;
    }
    int nargs = 0;
    if (c + 1 == count) {
      luaL_checkstack(L, (int)args->len + 2, "too many arguments to script");
      for (size_t i = 0; i < args->len; i++)
        lua_pushlstring(L, (const char *)args->ptr[i].ptr, args->ptr[i].len);
      nargs = (int)args->len;
    }
    int base = lua_gettop(L) - nargs;
    lua_pushcfunction(L, message_handler);
    lua_insert(L, base);
    status = lua_pcall(L, nargs, 0, base);
    lua_remove(L, base);
    if (status != LUA_OK) {
      record_runtime_error(L, run->outcome);
      return 0;
    }
  }
  run->outcome->tag = EXPORTS_MOONWALL_SANDBOX_SCRIPT_OUTCOME_COMPLETED;
  return 0;
}

void exports_moonwall_sandbox_script_run(exports_moonwall_sandbox_script_list_chunk_t *chunks,
                                         sandbox_list_string_t *args, outcome_t *outcome) {
  struct run run = {chunks, args, outcome};
  lua_State *L = moonwall_new_state();
  lua_pushcfunction(L, run_protected);
  lua_pushlightuserdata(L, &run);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* An error outside any chunk (for instance in an error handler). */
    outcome->tag = EXPORTS_MOONWALL_SANDBOX_SCRIPT_OUTCOME_RUNTIME_ERROR;
    moonwall_copy_value(&outcome->val.runtime_error.message, L, -1);
    moonwall_copy_out(&outcome->val.runtime_error.traceback, "", 0);
  }
  /* Finalizers run here, still under every limit of the run. */
  lua_close(L);
  exports_moonwall_sandbox_script_list_chunk_free(chunks);
  sandbox_list_string_free(args);
}

/* A growing buffer lua_dump writes the compiled chunk into. */
struct dump {
  uint8_t *bytes;
  size_t len, cap;
};

static int dump_writer(lua_State *L, const void *part, size_t size, void *data) {
  (void)L;
  struct dump *dump = data;
  if (size > dump->cap - dump->len) {
    size_t cap = dump->cap > 0 ? dump->cap : 4096;
    while (cap - dump->len < size) {
      if (cap > SIZE_MAX / 2)
        moonwall_memory_exhausted();
      cap *= 2;
    }
    uint8_t *bytes = realloc(dump->bytes, cap);
    if (bytes == NULL)
      moonwall_memory_exhausted();
    dump->bytes = bytes;
    dump->cap = cap;
  }
  memcpy(dump->bytes + dump->len, part, size);
  dump->len += size;
  return 0;
}

/* Compile only: the parser runs on a bare state (no libraries needed), then
 * the chunk is dumped with its debug information (chunk name, lines, local
 * names), so that errors raised by the loaded chunk still say `chunk:line`.
 * Nothing of the chunk runs. */
bool exports_moonwall_sandbox_script_compile(exports_moonwall_sandbox_script_chunk_t *chunk,
                                             sandbox_list_u8_t *ret, sandbox_list_u8_t *err) {
  lua_State *L = moonwall_new_state();
  const char *name = push_name(L, &chunk->name);
  int status = luaL_loadbufferx(L, (const char *)chunk->source.ptr, chunk->source.len, name, "t");
  bool compiled = status == LUA_OK;
  if (compiled) {
    struct dump dump = {NULL, 0, 0};
    lua_dump(L, dump_writer, &dump, 0);
    ret->ptr = dump.bytes;
    ret->len = dump.len;
  } else {
    moonwall_copy_value(err, L, -1);
  }
  lua_close(L);
  exports_moonwall_sandbox_script_chunk_free(chunk);
  return compiled;
}
