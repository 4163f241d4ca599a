/*
 * Primitives of lua/ngx_re.lua (ngx.re): calls into wit/regex.wit, and the
 * building of what scripts get back (captures tables, gsub's result) from
 * the offsets the host returns. The host compiles and searches; everything
 * built here is built in the guest's own capped memory.
 *
 * Conventions: a primitive returns false for "no match", nil and a message
 * for an error the API reports (a pattern that does not compile, ...).
 *
 * The names of a pattern's groups travel as a flat table
 * {name1, group1, name2, group2, ...} in group order (from compile).
 */
#include <stdint.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

#define NO_OFFSET 0xffffffffu
#define BATCH_META "moonwall.regex.batch"

typedef moonwall_sandbox_regex_matches_t matches_t;

/* The matches of one scan, kept in Lua memory for the Lua side. */
typedef struct {
  uint32_t stride; /* groups per match, group 0 included */
  uint32_t count;  /* matches */
  uint32_t offsets[];
} batch_t;

static uint32_t check_u32(lua_State *L, int index) {
  lua_Integer n = luaL_checkinteger(L, index);
  return n < 0 ? 0 : n > 0xffffffffLL ? 0xffffffffu : (uint32_t)n;
}

static moonwall_sandbox_regex_options_t check_options(lua_State *L, int index) {
  return (moonwall_sandbox_regex_options_t)(luaL_checkinteger(L, index) & 0xff);
}

/* options(letters) -> flags | nil, err: ngx.re's option letters as the
 * host's flags. `o` and `j` are accepted and change nothing. */
static int p_options(lua_State *L) {
  size_t len;
  const char *letters = luaL_checklstring(L, 1, &len);
  lua_Integer flags = 0;
  for (size_t i = 0; i < len; i++) {
    switch (letters[i]) {
    case 'i': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_CASELESS; break;
    case 'm': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_MULTILINE; break;
    case 's': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_DOTALL; break;
    case 'x': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_EXTENDED; break;
    case 'u': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_UTF8; break;
    case 'U':
      flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_UTF8 | MOONWALL_SANDBOX_REGEX_OPTIONS_NO_UTF8_CHECK;
      break;
    case 'a': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_ANCHORED; break;
    case 'D': flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_DUPNAMES; break;
    case 'o':
    case 'j': break;
    case 'd':
      lua_pushnil(L);
      lua_pushfstring(L, "flag \"d\" (DFA mode) is not supported (flags \"%s\")", letters);
      return 2;
    case 'J':
      lua_pushnil(L);
      lua_pushfstring(L, "flag \"J\" (JavaScript compatibility) is not supported (flags \"%s\")",
                      letters);
      return 2;
    default:
      lua_pushnil(L);
      lua_pushfstring(L, "unknown flag \"%c\" (flags \"%s\")", letters[i], letters);
      return 2;
    }
  }
  lua_pushinteger(L, flags);
  return 1;
}

/* compile(pattern, flags) -> groups, names (flat table, or false) | nil, err */
static int p_compile(lua_State *L) {
  sandbox_list_u8_t pattern = moonwall_borrowed_bytes(L, 1);
  moonwall_sandbox_regex_pattern_info_t info;
  sandbox_string_t err;
  if (!moonwall_sandbox_regex_compile(&pattern, check_options(L, 2), &info, &err))
    return moonwall_push_error(L, &err);
  lua_pushinteger(L, info.groups);
  if (info.names.len == 0) {
    lua_pushboolean(L, 0);
  } else {
    lua_createtable(L, (int)(info.names.len * 2), 0);
    for (size_t i = 0; i < info.names.len; i++) {
      lua_pushlstring(L, (const char *)info.names.ptr[i].f0.ptr, info.names.ptr[i].f0.len);
      lua_rawseti(L, -2, (lua_Integer)(2 * i + 1));
      lua_pushinteger(L, info.names.ptr[i].f1);
      lua_rawseti(L, -2, (lua_Integer)(2 * i + 2));
    }
  }
  moonwall_sandbox_regex_pattern_info_free(&info);
  return 2;
}

/* Bytes before the start of a search that are sent along: what look-behind
 * assertions (`\b`, `\B`, `^` with `m`) may look at. They are ASCII-only
 * (PCRE's \b is, without UCP), so one byte is enough. */
#define CONTEXT_BYTES 1

/* One scan; on failure pushes nil, err and returns 0. Offsets in `out` are
 * in `subject`. When the host need not check the subject's UTF-8, only the
 * part from just before `start` is sent: loops over a long subject (gmatch,
 * gsub, ctx.pos) then copy each byte to the host about once. */
static int scan(lua_State *L, int pattern_index, moonwall_sandbox_regex_options_t flags,
                const char *subject, size_t subject_len, uint32_t start, uint32_t want,
                uint32_t max, matches_t *out) {
  uint32_t base = 0;
  int checks_utf8 = (flags & MOONWALL_SANDBOX_REGEX_OPTIONS_UTF8) &&
                    !(flags & MOONWALL_SANDBOX_REGEX_OPTIONS_NO_UTF8_CHECK);
  if (!checks_utf8 && start > CONTEXT_BYTES)
    base = start - CONTEXT_BYTES;
  sandbox_list_u8_t pattern = moonwall_borrowed_bytes(L, pattern_index);
  sandbox_list_u8_t subj = {(uint8_t *)subject + base, subject_len - base};
  sandbox_string_t err;
  if (!moonwall_sandbox_regex_scan(&pattern, flags, &subj, start - base, want, max, out, &err)) {
    moonwall_push_error(L, &err);
    return 0;
  }
  if (base > 0) {
    for (size_t i = 0; i < out->offsets.len; i++)
      if (out->offsets.ptr[i] != NO_OFFSET)
        out->offsets.ptr[i] += base;
    if (out->next.is_some)
      out->next.val += base;
  }
  return 1;
}

/* A start offset argument (0-based); past the subject, nothing matches. */
static int check_start(lua_State *L, int index, size_t subject_len, uint32_t *start) {
  lua_Integer n = luaL_checkinteger(L, index);
  if (n < 0)
    n = 0;
  if ((lua_Unsigned)n > subject_len)
    return 0;
  *start = (uint32_t)n;
  return 1;
}

/* Push the captures table of one match: t[0] the whole match, t[1..groups]
 * the groups (false for those that did not participate, or that `offsets`
 * does not hold), then the named groups. `res` (an index, or 0) is a table
 * to fill instead of a new one. */
static void push_captures(lua_State *L, const char *subject, size_t subject_len,
                          const uint32_t *offsets, uint32_t stride, lua_Integer groups, int names,
                          int dupnames, int res) {
  lua_Integer named = lua_istable(L, names) ? luaL_len(L, names) / 2 : 0;
  if (res != 0)
    lua_pushvalue(L, res);
  else
    lua_createtable(L, groups > 0 && groups < 0x10000 ? (int)groups : 0, (int)(1 + named));
  int t = lua_gettop(L);
  for (lua_Integer g = 0; g <= groups; g++) {
    uint32_t from = NO_OFFSET, to = NO_OFFSET;
    if ((lua_Unsigned)g < stride) {
      from = offsets[2 * g];
      to = offsets[2 * g + 1];
    }
    if (from == NO_OFFSET || to < from || to > subject_len)
      lua_pushboolean(L, 0);
    else
      lua_pushlstring(L, subject + from, to - from);
    lua_rawseti(L, t, g);
  }
  if (named == 0)
    return;
  if (dupnames) {
    /* Every name maps to the list of its groups that matched (absent if
     * none did), as OpenResty does with D. */
    for (lua_Integer i = 1; i <= named; i++) {
      lua_rawgeti(L, names, 2 * i - 1);
      lua_pushnil(L);
      lua_rawset(L, t);
    }
    for (lua_Integer i = 1; i <= named; i++) {
      lua_rawgeti(L, names, 2 * i - 1); /* name */
      lua_rawgeti(L, names, 2 * i);
      lua_Integer g = lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (lua_rawgeti(L, t, g) != LUA_TSTRING) {
        lua_pop(L, 2);
        continue;
      }
      lua_pushvalue(L, -2);
      if (lua_rawget(L, t) != LUA_TTABLE) { /* name capture list */
        lua_pop(L, 1);
        lua_createtable(L, 1, 0);
        lua_pushvalue(L, -3);
        lua_pushvalue(L, -2);
        lua_rawset(L, t);
      }
      lua_rotate(L, -2, 1); /* name list capture */
      lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
      lua_pop(L, 2);
    }
  } else {
    for (lua_Integer i = 1; i <= named; i++) {
      lua_rawgeti(L, names, 2 * i - 1);
      lua_rawgeti(L, names, 2 * i);
      lua_rawget(L, t); /* the group's value */
      lua_rawset(L, t);
    }
  }
}

/* match(pattern, flags, subject, start, groups, names, res?) -> captures, end
 * | false | nil, err */
static int p_match(lua_State *L) {
  moonwall_sandbox_regex_options_t flags = check_options(L, 2);
  size_t subject_len;
  const char *subject = luaL_checklstring(L, 3, &subject_len);
  lua_Integer groups = luaL_checkinteger(L, 5);
  int res = lua_istable(L, 7) ? 7 : 0;
  uint32_t start;
  if (!check_start(L, 4, subject_len, &start)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  matches_t found;
  if (!scan(L, 1, flags, subject, subject_len, start, NO_OFFSET, 1, &found))
    return 2;
  if (found.offsets.len < 2) {
    moonwall_sandbox_regex_matches_free(&found);
    lua_pushboolean(L, 0);
    return 1;
  }
  push_captures(L, subject, subject_len, found.offsets.ptr, found.groups, groups, 6,
                (flags & MOONWALL_SANDBOX_REGEX_OPTIONS_DUPNAMES) != 0, res);
  lua_pushinteger(L, found.offsets.ptr[1]);
  moonwall_sandbox_regex_matches_free(&found);
  return 2;
}

/* find(pattern, flags, subject, start, nth) -> end, from | false, to
 * | false | nil, err. `from` and `to` are 1-based, inclusive. */
static int p_find(lua_State *L) {
  moonwall_sandbox_regex_options_t flags = check_options(L, 2);
  size_t subject_len;
  const char *subject = luaL_checklstring(L, 3, &subject_len);
  uint32_t nth = check_u32(L, 5);
  uint32_t start;
  if (!check_start(L, 4, subject_len, &start)) {
    lua_pushboolean(L, 0);
    return 1;
  }
  matches_t found;
  uint32_t want = nth == NO_OFFSET ? nth : nth + 1;
  if (!scan(L, 1, flags, subject, subject_len, start, want, 1, &found))
    return 2;
  if (found.offsets.len < 2) {
    moonwall_sandbox_regex_matches_free(&found);
    lua_pushboolean(L, 0);
    return 1;
  }
  const uint32_t *o = found.offsets.ptr;
  lua_pushinteger(L, o[1]);
  if (nth < found.groups && o[2 * nth] != NO_OFFSET) {
    lua_pushinteger(L, (lua_Integer)o[2 * nth] + 1);
    lua_pushinteger(L, o[2 * nth + 1]);
  } else {
    lua_pushboolean(L, 0);
    lua_pushboolean(L, 0);
  }
  moonwall_sandbox_regex_matches_free(&found);
  return 3;
}

/* scan(pattern, flags, subject, start, want_groups, max) -> batch, next | false
 * | nil, err. `next` is where to go on (false: no more matches). */
static int p_scan(lua_State *L) {
  moonwall_sandbox_regex_options_t flags = check_options(L, 2);
  size_t subject_len;
  const char *subject = luaL_checklstring(L, 3, &subject_len);
  uint32_t want = check_u32(L, 5);
  uint32_t max = check_u32(L, 6);
  uint32_t start;
  matches_t found;
  found.groups = 1;
  found.offsets.ptr = NULL;
  found.offsets.len = 0;
  found.next.is_some = false;
  int searched = check_start(L, 4, subject_len, &start);
  if (searched && !scan(L, 1, flags, subject, subject_len, start, want, max, &found))
    return 2;
  uint32_t stride = found.groups > 0 ? found.groups : 1;
  size_t count = found.offsets.len / (2 * (size_t)stride);
  batch_t *batch = lua_newuserdatauv(L, sizeof(batch_t) + count * 2 * stride * sizeof(uint32_t), 0);
  batch->stride = stride;
  batch->count = (uint32_t)count;
  if (count > 0)
    memcpy(batch->offsets, found.offsets.ptr, count * 2 * stride * sizeof(uint32_t));
  luaL_setmetatable(L, BATCH_META);
  if (found.next.is_some)
    lua_pushinteger(L, found.next.val);
  else
    lua_pushboolean(L, 0);
  if (searched)
    moonwall_sandbox_regex_matches_free(&found);
  return 2;
}

static batch_t *check_batch(lua_State *L, int index) {
  return (batch_t *)luaL_checkudata(L, index, BATCH_META);
}

/* count(batch) -> matches */
static int p_count(lua_State *L) {
  lua_pushinteger(L, check_batch(L, 1)->count);
  return 1;
}

static const uint32_t *batch_match(lua_State *L, batch_t *batch, int index) {
  lua_Integer k = luaL_checkinteger(L, index);
  luaL_argcheck(L, k >= 1 && k <= (lua_Integer)batch->count, index, "no such match");
  return batch->offsets + (size_t)(k - 1) * 2 * batch->stride;
}

/* span(batch, k, group) -> from, to (0-based, end exclusive) | false */
static int p_span(lua_State *L) {
  batch_t *batch = check_batch(L, 1);
  const uint32_t *o = batch_match(L, batch, 2);
  lua_Integer g = luaL_checkinteger(L, 3);
  if (g < 0 || g >= (lua_Integer)batch->stride || o[2 * g] == NO_OFFSET) {
    lua_pushboolean(L, 0);
    return 1;
  }
  lua_pushinteger(L, o[2 * g]);
  lua_pushinteger(L, o[2 * g + 1]);
  return 2;
}

/* captures(batch, k, subject, groups, names, flags) -> the captures table */
static int p_captures(lua_State *L) {
  batch_t *batch = check_batch(L, 1);
  const uint32_t *o = batch_match(L, batch, 2);
  size_t subject_len;
  const char *subject = luaL_checklstring(L, 3, &subject_len);
  lua_Integer groups = luaL_checkinteger(L, 4);
  lua_Integer flags = luaL_checkinteger(L, 6);
  push_captures(L, subject, subject_len, o, batch->stride, groups, 5,
                (flags & MOONWALL_SANDBOX_REGEX_OPTIONS_DUPNAMES) != 0, 0);
  return 1;
}

/* A replacement template, compiled: literal runs and group references. */
enum { PIECE_TEXT, PIECE_GROUP, PIECE_NAME };

typedef struct {
  int kind;
  size_t from, len;   /* PIECE_TEXT, PIECE_NAME: the text or name in the template */
  uint32_t group;     /* PIECE_GROUP */
} piece_t;

static int is_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
}

/* Does the flat names table at `names` have `name`? */
static int has_name(lua_State *L, int names, const char *name, size_t len) {
  if (!lua_istable(L, names))
    return 0;
  lua_Integer named = luaL_len(L, names) / 2;
  for (lua_Integer i = 1; i <= named; i++) {
    size_t n;
    lua_rawgeti(L, names, 2 * i - 1);
    const char *s = lua_tolstring(L, -1, &n);
    int same = s != NULL && n == len && memcmp(s, name, len) == 0;
    lua_pop(L, 1);
    if (same)
      return 1;
  }
  return 0;
}

/* Compile template `tpl` into `pieces` (room for 2 * (number of '$') + 1).
 * Returns the count, or -1 with an error message pushed. Sets *want to the
 * groups (plus group 0) the template needs. */
static int compile_template(lua_State *L, const char *tpl, size_t len, int names,
                            lua_Integer groups, piece_t *pieces, uint32_t *want) {
  int n = 0;
  size_t i = 0;
  *want = 1;
  while (i < len) {
    if (tpl[i] != '$') {
      size_t from = i;
      while (i < len && tpl[i] != '$')
        i++;
      pieces[n++] = (piece_t){PIECE_TEXT, from, i - from, 0};
      continue;
    }
    i++;
    if (i < len && tpl[i] == '$') {
      pieces[n++] = (piece_t){PIECE_TEXT, i, 1, 0};
      i++;
      continue;
    }
    int braced = i < len && tpl[i] == '{';
    if (braced)
      i++;
    size_t from = i;
    if (i < len && tpl[i] >= '0' && tpl[i] <= '9') {
      uint32_t group = 0;
      while (i < len && tpl[i] >= '0' && tpl[i] <= '9') {
        group = group > 100000000u ? 1000000000u : group * 10 + (uint32_t)(tpl[i] - '0');
        i++;
      }
      pieces[n++] = (piece_t){PIECE_GROUP, 0, 0, group};
      if ((lua_Integer)group <= groups && group + 1 > *want)
        *want = group + 1;
    } else {
      while (i < len && is_name_char(tpl[i]))
        i++;
      if (i == from) {
        lua_pushnil(L);
        lua_pushfstring(L,
                        "failed to compile the replacement template: invalid capturing "
                        "variable name at byte %d",
                        (int)from);
        return -1;
      }
      if (!has_name(L, names, tpl + from, i - from)) {
        lua_pushnil(L);
        lua_pushliteral(L, "failed to compile the replacement template: no group named \"");
        lua_pushlstring(L, tpl + from, i - from);
        lua_pushliteral(L, "\"");
        lua_concat(L, 3);
        return -1;
      }
      pieces[n++] = (piece_t){PIECE_NAME, from, i - from, 0};
      if (groups + 1 > (lua_Integer)*want)
        *want = (uint32_t)(groups + 1);
    }
    if (braced) {
      if (i >= len || tpl[i] != '}') {
        lua_pushnil(L);
        lua_pushfstring(L,
                        "failed to compile the replacement template: the closing bracket of "
                        "the variable at byte %d is missing",
                        (int)from);
        return -1;
      }
      i++;
    }
  }
  return n;
}

/* Append group `g` of a match (nothing if it did not participate). */
static void add_group(luaL_Buffer *b, const char *subject, size_t subject_len, const uint32_t *o,
                      uint32_t stride, uint32_t g) {
  if (g >= stride || o[2 * g] == NO_OFFSET || o[2 * g + 1] < o[2 * g] ||
      o[2 * g + 1] > subject_len)
    return;
  luaL_addlstring(b, subject + o[2 * g], o[2 * g + 1] - o[2 * g]);
}

/* The first group named like piece `p` that took part in the match. */
static uint32_t named_group(lua_State *L, int names, const char *tpl, const piece_t *p,
                            const uint32_t *o, uint32_t stride) {
  lua_Integer named = luaL_len(L, names) / 2;
  for (lua_Integer i = 1; i <= named; i++) {
    size_t n;
    lua_rawgeti(L, names, 2 * i - 1);
    const char *s = lua_tolstring(L, -1, &n);
    int same = s != NULL && n == p->len && memcmp(s, tpl + p->from, n) == 0;
    lua_pop(L, 1);
    if (!same)
      continue;
    lua_rawgeti(L, names, 2 * i);
    lua_Integer g = lua_tointeger(L, -1);
    lua_pop(L, 1);
    if (g >= 0 && g < (lua_Integer)stride && o[2 * g] != NO_OFFSET)
      return (uint32_t)g;
  }
  return NO_OFFSET;
}

/* gsub(pattern, flags, subject, template, groups, names, global)
 * -> result, count | nil, err */
static int p_gsub(lua_State *L) {
  moonwall_sandbox_regex_options_t flags = check_options(L, 2);
  size_t subject_len, tpl_len;
  const char *subject = luaL_checklstring(L, 3, &subject_len);
  const char *tpl = luaL_checklstring(L, 4, &tpl_len);
  lua_Integer groups = luaL_checkinteger(L, 5);
  const int names = 6;
  int global = lua_toboolean(L, 7);
  lua_settop(L, 7);

  size_t dollars = 0;
  for (size_t i = 0; i < tpl_len; i++)
    dollars += tpl[i] == '$';
  piece_t *pieces = lua_newuserdatauv(L, sizeof(piece_t) * (2 * dollars + 1), 0); /* 8 */
  uint32_t want;
  int npieces = compile_template(L, tpl, tpl_len, names, groups, pieces, &want);
  if (npieces < 0)
    return 2;

  luaL_Buffer b;
  luaL_buffinit(L, &b);
  uint32_t pos = 0;
  size_t copied = 0;
  lua_Integer count = 0;
  for (;;) {
    matches_t found;
    if (!scan(L, 1, flags, subject, subject_len, pos, want, global ? NO_OFFSET : 1, &found))
      return 2;
    uint32_t stride = found.groups > 0 ? found.groups : 1;
    size_t matches = found.offsets.len / (2 * (size_t)stride);
    for (size_t m = 0; m < matches; m++) {
      const uint32_t *o = found.offsets.ptr + m * 2 * stride;
      if (o[0] < copied || o[1] < o[0] || o[1] > subject_len)
        continue; /* never: the host returns ordered offsets */
      luaL_addlstring(&b, subject + copied, o[0] - copied);
      for (int k = 0; k < npieces; k++) {
        const piece_t *p = &pieces[k];
        if (p->kind == PIECE_TEXT)
          luaL_addlstring(&b, tpl + p->from, p->len);
        else if (p->kind == PIECE_GROUP)
          add_group(&b, subject, subject_len, o, stride, p->group);
        else
          add_group(&b, subject, subject_len, o, stride,
                    named_group(L, names, tpl, p, o, stride));
      }
      copied = o[1];
      count++;
    }
    int more = global && found.next.is_some;
    pos = found.next.val;
    moonwall_sandbox_regex_matches_free(&found);
    if (!more)
      break;
    flags |= MOONWALL_SANDBOX_REGEX_OPTIONS_NO_UTF8_CHECK; /* checked once */
  }
  if (count == 0) {
    lua_pushvalue(L, 3);
    lua_pushinteger(L, 0);
    return 2;
  }
  luaL_addlstring(&b, subject + copied, subject_len - copied);
  luaL_pushresult(&b);
  lua_pushinteger(L, count);
  return 2;
}

int moonwall_open_regex(lua_State *L) {
  static const luaL_Reg primitives[] = {
      {"options", p_options},
      {"compile", p_compile},
      {"match", p_match},
      {"find", p_find},
      {"scan", p_scan},
      {"count", p_count},
      {"span", p_span},
      {"captures", p_captures},
      {"gsub", p_gsub},
      {NULL, NULL},
  };
  if (luaL_newmetatable(L, BATCH_META)) {
    lua_pushliteral(L, "regex matches");
    lua_setfield(L, -2, "__name");
    lua_pushboolean(L, 0);
    lua_setfield(L, -2, "__metatable");
  }
  lua_pop(L, 1);
  luaL_newlib(L, primitives);
  lua_pushinteger(L, MOONWALL_SANDBOX_REGEX_OPTIONS_NO_UTF8_CHECK);
  lua_setfield(L, -2, "NO_UTF8_CHECK");
  lua_pushinteger(L, MOONWALL_SANDBOX_REGEX_OPTIONS_DUPNAMES);
  lua_setfield(L, -2, "DUPNAMES");
  return 1;
}
