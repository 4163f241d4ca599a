/*
 * Primitives of lua/ngx_shared.lua (ngx.shared.DICT): each a call into
 * wit/shared-dict.wit. Nothing here is a security boundary: the host checks
 * every handle, key, value and size. The Lua side shapes OpenResty's API.
 *
 * Every primitive returns nil and a message when the host refuses.
 */
#include <stdint.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

typedef moonwall_sandbox_shared_dict_value_t dict_value;

static uint32_t check_handle(lua_State *L, int index) {
  lua_Integer h = luaL_checkinteger(L, index);
  return (h < 0 || h > 0xffffffffLL) ? 0xffffffffu : (uint32_t)h;
}

/* A key (or name) borrowed from the Lua string at `index`: it stays alive on
 * the stack while the host reads it. */
/* A non-negative integer argument, saturated to what the host takes. */
static uint64_t check_u64(lua_State *L, int index) {
  lua_Integer n = luaL_checkinteger(L, index);
  return n < 0 ? 0 : (uint64_t)n;
}

static uint32_t check_u32(lua_State *L, int index) {
  lua_Integer n = luaL_checkinteger(L, index);
  return n < 0 ? 0 : n > 0xffffffffLL ? 0xffffffffu : (uint32_t)n;
}

/* The value at `index` (a string, number or boolean), borrowing strings.
 * Returns 0 for any other type. */
static int to_value(lua_State *L, int index, dict_value *out) {
  switch (lua_type(L, index)) {
  case LUA_TSTRING: {
    size_t len;
    const char *bytes = lua_tolstring(L, index, &len);
    out->tag = MOONWALL_SANDBOX_SHARED_DICT_VALUE_STR;
    out->val.str.ptr = (uint8_t *)bytes;
    out->val.str.len = len;
    return 1;
  }
  case LUA_TNUMBER:
    if (lua_isinteger(L, index)) {
      out->tag = MOONWALL_SANDBOX_SHARED_DICT_VALUE_INT;
      out->val.int_ = (int64_t)lua_tointeger(L, index);
    } else {
      out->tag = MOONWALL_SANDBOX_SHARED_DICT_VALUE_FLOAT;
      out->val.float_ = (double)lua_tonumber(L, index);
    }
    return 1;
  case LUA_TBOOLEAN:
    out->tag = MOONWALL_SANDBOX_SHARED_DICT_VALUE_BOOLEAN;
    out->val.boolean = lua_toboolean(L, index);
    return 1;
  default:
    return 0;
  }
}

/* Push a value the host returned, and free what it holds. */
static void push_value(lua_State *L, dict_value *value) {
  switch (value->tag) {
  case MOONWALL_SANDBOX_SHARED_DICT_VALUE_STR:
    lua_pushlstring(L, (const char *)value->val.str.ptr, value->val.str.len);
    break;
  case MOONWALL_SANDBOX_SHARED_DICT_VALUE_INT:
    lua_pushinteger(L, (lua_Integer)value->val.int_);
    break;
  case MOONWALL_SANDBOX_SHARED_DICT_VALUE_FLOAT:
    lua_pushnumber(L, (lua_Number)value->val.float_);
    break;
  default:
    lua_pushboolean(L, value->val.boolean);
    break;
  }
  moonwall_sandbox_shared_dict_value_free(value);
}

/* open(name) -> handle | nil, err */
static int p_open(lua_State *L) {
  sandbox_list_u8_t name = moonwall_borrowed_bytes(L, 1);
  uint32_t handle;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_open(&name, &handle, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, handle);
  return 1;
}

/* capacity(h) -> bytes | nil, err */
static int p_capacity(lua_State *L) {
  uint64_t bytes;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_capacity(check_handle(L, 1), &bytes, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)bytes);
  return 1;
}

/* free_space(h) -> bytes | nil, err */
static int p_free_space(lua_State *L) {
  uint64_t bytes;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_free_space(check_handle(L, 1), &bytes, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)bytes);
  return 1;
}

/* get(h, key, stale) -> true, value, flags, stale | false | nil, err */
static int p_get(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  moonwall_sandbox_shared_dict_option_item_t found;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_get(handle, &key, lua_toboolean(L, 3), &found, &err))
    return moonwall_push_error(L, &err);
  if (!found.is_some) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  push_value(L, &found.val.value);
  lua_pushinteger(L, (lua_Integer)found.val.flags);
  lua_pushboolean(L, found.val.stale);
  return 4;
}

/* store(h, key, value|nil, ttl_ms, flags, mode) -> forcible | nil, err */
static int p_store(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  dict_value value;
  dict_value *maybe_value = NULL;
  if (!lua_isnoneornil(L, 3)) {
    if (!to_value(L, 3, &value))
      return luaL_error(L, "store: bad value type");
    maybe_value = &value;
  }
  uint64_t ttl_ms = check_u64(L, 4);
  uint32_t flags = check_u32(L, 5);
  lua_Integer mode = luaL_checkinteger(L, 6);
  if (mode < 0 || mode > MOONWALL_SANDBOX_SHARED_DICT_STORE_MODE_REPLACE)
    return luaL_error(L, "store: bad mode");
  bool forcible;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_store(handle, &key, maybe_value, ttl_ms, flags,
                                          (moonwall_sandbox_shared_dict_store_mode_t)mode,
                                          &forcible, &err))
    return moonwall_push_error(L, &err);
  lua_pushboolean(L, forcible);
  return 1;
}

/* incr(h, key, delta, init|nil, init_ttl_ms) -> value, forcible | nil, err */
static int p_incr(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  dict_value delta, init;
  dict_value *maybe_init = NULL;
  luaL_checktype(L, 3, LUA_TNUMBER);
  to_value(L, 3, &delta);
  if (!lua_isnoneornil(L, 4)) {
    luaL_checktype(L, 4, LUA_TNUMBER);
    to_value(L, 4, &init);
    maybe_init = &init;
  }
  uint64_t init_ttl_ms = check_u64(L, 5);
  moonwall_sandbox_shared_dict_tuple2_value_bool_t result;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_incr(handle, &key, &delta, maybe_init, init_ttl_ms, &result,
                                         &err))
    return moonwall_push_error(L, &err);
  push_value(L, &result.f0);
  lua_pushboolean(L, result.f1);
  return 2;
}

/* ttl(h, key) -> ms | nil, err */
static int p_ttl(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  uint64_t ms;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_ttl(handle, &key, &ms, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)ms);
  return 1;
}

/* expire(h, key, ttl_ms) -> true | nil, err */
static int p_expire(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_expire(handle, &key, check_u64(L, 3), &err))
    return moonwall_push_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* flush_all(h) -> true | nil, err */
static int p_flush_all(lua_State *L) {
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_flush_all(check_handle(L, 1), &err))
    return moonwall_push_error(L, &err);
  lua_pushboolean(L, 1);
  return 1;
}

/* flush_expired(h, max) -> count | nil, err */
static int p_flush_expired(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  uint32_t count;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_flush_expired(handle, check_u32(L, 2), &count, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, count);
  return 1;
}

/* get_keys(h, max) -> {key, ...} | nil, err */
static int p_get_keys(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_list_u8_t keys;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_get_keys(handle, check_u32(L, 2), &keys, &err))
    return moonwall_push_error(L, &err);
  lua_createtable(L, keys.len > 0x7fffffff ? 0x7fffffff : (int)keys.len, 0);
  for (size_t i = 0; i < keys.len; i++) {
    lua_pushlstring(L, (const char *)keys.ptr[i].ptr, keys.ptr[i].len);
    lua_rawseti(L, -2, (lua_Integer)(i + 1));
  }
  sandbox_list_list_u8_free(&keys);
  return 1;
}

/* push(h, key, value, front) -> length | nil, err */
static int p_push(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  dict_value value;
  if (!to_value(L, 3, &value))
    return luaL_error(L, "push: bad value type");
  uint64_t length;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_push(handle, &key, &value, lua_toboolean(L, 4), &length, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)length);
  return 1;
}

/* pop(h, key, front) -> true, value | false | nil, err */
static int p_pop(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  moonwall_sandbox_shared_dict_option_value_t found;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_pop(handle, &key, lua_toboolean(L, 3), &found, &err))
    return moonwall_push_error(L, &err);
  if (!found.is_some) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushboolean(L, 1);
  push_value(L, &found.val);
  return 2;
}

/* llen(h, key) -> length | nil, err */
static int p_llen(lua_State *L) {
  uint32_t handle = check_handle(L, 1);
  sandbox_list_u8_t key = moonwall_borrowed_bytes(L, 2);
  uint64_t length;
  sandbox_string_t err;
  if (!moonwall_sandbox_shared_dict_llen(handle, &key, &length, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, (lua_Integer)length);
  return 1;
}

int moonwall_open_shared_dict(lua_State *L) {
  static const luaL_Reg primitives[] = {
      {"open", p_open},
      {"capacity", p_capacity},
      {"free_space", p_free_space},
      {"get", p_get},
      {"store", p_store},
      {"incr", p_incr},
      {"ttl", p_ttl},
      {"expire", p_expire},
      {"flush_all", p_flush_all},
      {"flush_expired", p_flush_expired},
      {"get_keys", p_get_keys},
      {"push", p_push},
      {"pop", p_pop},
      {"llen", p_llen},
      {NULL, NULL},
  };
  luaL_newlib(L, primitives);
  return 1;
}
