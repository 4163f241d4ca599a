/*
 * JSON for Lua: require("cjson") and require("cjson.safe").
 *
 * moonwall's own implementation of the API of lua-cjson 2.1 as OpenResty
 * ships it (the `cjson` module of OpenResty's fork: empty_array, array_mt,
 * empty_array_mt, encode_empty_table_as_object, ...), for Lua 5.4: integers
 * stay integers both ways. Pure computation inside the guest: no WIT import,
 * no grant; every tenant has it.
 *
 * Hostile input is contained by construction:
 * - neither the encoder nor the decoder recurses in C: both walk nested
 *   values with an explicit stack (tables on the Lua stack, per-level state
 *   in a growable array), so no input depth reaches the C or wasm stack.
 *   Depth is bounded by encode_max_depth / decode_max_depth (default 1000)
 *   and, whatever those are set to, by lua_checkstack (Lua's own stack cap);
 *   both give lua-cjson's depth errors. A cyclic table hits the depth bound.
 * - output and scratch text live in growable buffers allocated through
 *   Lua's allocator (freed by __gc if an error unwinds, at once otherwise);
 *   they only cost the run's own, host-capped memory. Running out ends the
 *   run like any Lua allocation failure (moonwall_memory_exhausted).
 * - every pass over input is linear: strings are scanned once, numbers are
 *   read once (strtod only for the rare forms the fast path leaves).
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"

#define CJSON_NAME "cjson"
#define CJSON_VERSION "2.1.0.11" /* what OpenResty's lua_cjson.c reports */

/* Registry keys (their addresses) and the empty_array value. */
static char key_array_mt;
static char key_empty_array_mt;
static char key_buffer_mt;
static char empty_array_tag;

/* ---- configuration ------------------------------------------------------ */

typedef struct {
  int sparse_convert;
  int sparse_ratio;
  int sparse_safe;
  int encode_max_depth;
  int decode_max_depth;
  int encode_invalid_numbers; /* 0: error, 1: NaN/Infinity, 2: null */
  int decode_invalid_numbers;
  int number_precision;
  int keep_buffer; /* accepted for compatibility; every encode has its own buffer */
  int empty_table_as_object;
  int decode_array_with_array_mt;
  int escape_forward_slash;
  int skip_unsupported;
  int allow_comment;
} json_config;
/* The configuration is a full userdata, the upvalue of every function of
 * one module table; its user value 1 is the indent string (or nil). */

static json_config *get_config(lua_State *L) {
  json_config *cfg = (json_config *)lua_touserdata(L, lua_upvalueindex(1));
  if (cfg == NULL)
    luaL_error(L, "cjson: configuration missing (called outside its module table)");
  return cfg;
}

/* lua-cjson's argument handling for the settings: at most `args`
 * arguments, missing ones read as nil. */
static json_config *setting_args(lua_State *L, int args) {
  luaL_argcheck(L, lua_gettop(L) <= args, args + 1, "found too many arguments");
  lua_settop(L, args);
  return get_config(L);
}

static void integer_setting(lua_State *L, int index, int *setting, int min, int max) {
  if (!lua_isnil(L, index)) {
    lua_Integer value = luaL_checkinteger(L, index);
    if (value < min || value > max) {
      lua_pushfstring(L, "expected integer between %d and %d", min, max);
      luaL_argerror(L, index, lua_tostring(L, -1));
    }
    *setting = (int)value;
  }
  lua_pushinteger(L, *setting);
}

/* A setting given as a boolean or one of `options` (default "off", "on");
 * pushes the current value: a boolean for off/on, else the option name. */
static void enum_setting(lua_State *L, int index, int *setting, const char *const *options) {
  static const char *const on_off[] = {"off", "on", NULL};
  if (options == NULL)
    options = on_off;
  if (!lua_isnil(L, index)) {
    if (lua_isboolean(L, index))
      *setting = lua_toboolean(L, index);
    else
      *setting = luaL_checkoption(L, index, NULL, options);
  }
  if (*setting == 0 || *setting == 1)
    lua_pushboolean(L, *setting);
  else
    lua_pushstring(L, options[*setting]);
}

static int cfg_encode_sparse_array(lua_State *L) {
  json_config *cfg = setting_args(L, 3);
  enum_setting(L, 1, &cfg->sparse_convert, NULL);
  integer_setting(L, 2, &cfg->sparse_ratio, 0, INT_MAX);
  integer_setting(L, 3, &cfg->sparse_safe, 0, INT_MAX);
  return 3;
}

static int cfg_encode_max_depth(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  integer_setting(L, 1, &cfg->encode_max_depth, 1, INT_MAX);
  return 1;
}

static int cfg_decode_max_depth(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  integer_setting(L, 1, &cfg->decode_max_depth, 1, INT_MAX);
  return 1;
}

static int cfg_encode_number_precision(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  integer_setting(L, 1, &cfg->number_precision, 1, 16);
  return 1;
}

static int cfg_encode_keep_buffer(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->keep_buffer, NULL);
  return 1;
}

static int cfg_encode_invalid_numbers(lua_State *L) {
  static const char *const options[] = {"off", "on", "null", NULL};
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->encode_invalid_numbers, options);
  return 1;
}

static int cfg_decode_invalid_numbers(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->decode_invalid_numbers, NULL);
  return 1;
}

static int cfg_encode_empty_table_as_object(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->empty_table_as_object, NULL);
  return 1;
}

static int cfg_decode_array_with_array_mt(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->decode_array_with_array_mt, NULL);
  return 1;
}

static int cfg_encode_escape_forward_slash(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->escape_forward_slash, NULL);
  return 1;
}

static int cfg_encode_skip_unsupported_value_types(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->skip_unsupported, NULL);
  return 1;
}

static int cfg_decode_allow_comment(lua_State *L) {
  json_config *cfg = setting_args(L, 1);
  enum_setting(L, 1, &cfg->allow_comment, NULL);
  return 1;
}

/* encode_indent(string): "" turns indenting off. */
static int cfg_encode_indent(lua_State *L) {
  setting_args(L, 1);
  if (!lua_isnil(L, 1)) {
    size_t len;
    luaL_checklstring(L, 1, &len);
    if (len > 0)
      lua_pushvalue(L, 1);
    else
      lua_pushnil(L);
    lua_setiuservalue(L, lua_upvalueindex(1), 1);
  }
  if (lua_getiuservalue(L, lua_upvalueindex(1), 1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushliteral(L, "");
  }
  return 1;
}

static void default_config(json_config *cfg) {
  cfg->sparse_convert = 0;
  cfg->sparse_ratio = 2;
  cfg->sparse_safe = 10;
  cfg->encode_max_depth = 1000;
  cfg->decode_max_depth = 1000;
  cfg->encode_invalid_numbers = 0;
  cfg->decode_invalid_numbers = 1;
  cfg->number_precision = 14;
  cfg->keep_buffer = 1;
  cfg->empty_table_as_object = 1;
  cfg->decode_array_with_array_mt = 0;
  cfg->escape_forward_slash = 1;
  cfg->skip_unsupported = 0;
  cfg->allow_comment = 0;
}

/* ---- growable byte buffers ---------------------------------------------- */

/* The memory of a buffer, owned by a userdata on the Lua stack: if an error
 * unwinds, __gc frees it; on success the user frees it at once. */
typedef struct {
  char *data;
  size_t cap;
} json_box;

typedef struct {
  lua_State *L;
  json_box *box;
  size_t len;
} json_buf;

static int box_gc(lua_State *L) {
  json_box *box = (json_box *)lua_touserdata(L, 1);
  if (box != NULL && box->data != NULL) {
    void *ud;
    lua_Alloc alloc = lua_getallocf(L, &ud);
    alloc(ud, box->data, box->cap, 0);
    box->data = NULL;
    box->cap = 0;
  }
  return 0;
}

/* Push a new, empty box and point `b` at it. */
static void buf_open(lua_State *L, json_buf *b) {
  json_box *box = (json_box *)lua_newuserdatauv(L, sizeof(json_box), 0);
  box->data = NULL;
  box->cap = 0;
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_buffer_mt);
  lua_setmetatable(L, -2);
  b->L = L;
  b->box = box;
  b->len = 0;
}

static void buf_free(json_buf *b) {
  if (b->box != NULL && b->box->data != NULL) {
    void *ud;
    lua_Alloc alloc = lua_getallocf(b->L, &ud);
    alloc(ud, b->box->data, b->box->cap, 0);
    b->box->data = NULL;
    b->box->cap = 0;
  }
}

static void buf_grow(json_buf *b, size_t extra) {
  lua_State *L = b->L;
  json_box *box = b->box;
  if (extra > SIZE_MAX - b->len - 1)
    luaL_error(L, "cjson: JSON text too large");
  size_t need = b->len + extra;
  size_t cap = box->cap < 256 ? 256 : box->cap;
  while (cap < need)
    cap = cap > SIZE_MAX / 2 ? need : cap * 2;
  void *ud;
  lua_Alloc alloc = lua_getallocf(L, &ud);
  char *data = (char *)alloc(ud, box->data, box->data ? box->cap : 0, cap);
  if (data == NULL) {
    /* As Lua does before giving up: collect, then try once more. */
    lua_gc(L, LUA_GCCOLLECT);
    data = (char *)alloc(ud, box->data, box->data ? box->cap : 0, cap);
    if (data == NULL)
      moonwall_memory_exhausted();
  }
  box->data = data;
  box->cap = cap;
}

static inline void buf_reserve(json_buf *b, size_t extra) {
  if (b->box->cap - b->len < extra)
    buf_grow(b, extra);
}

static inline void buf_add(json_buf *b, const char *bytes, size_t len) {
  if (len == 0)
    return;
  buf_reserve(b, len);
  memcpy(b->box->data + b->len, bytes, len);
  b->len += len;
}

static inline void buf_addc(json_buf *b, char c) {
  buf_reserve(b, 1);
  b->box->data[b->len++] = c;
}

/* An array of fixed-size frames: first on the C stack, then, past that,
 * in a userdata kept at Lua stack slot `slot`. */
typedef struct {
  void *items;
  size_t count;
  size_t cap;
} frame_stack;

static void *frames_push(lua_State *L, frame_stack *fs, int slot, size_t item_size) {
  if (fs->count == fs->cap) {
    if (fs->cap > (SIZE_MAX / 2) / item_size)
      luaL_error(L, "cjson: too many nested data structures");
    size_t cap = fs->cap * 2;
    void *items = lua_newuserdatauv(L, cap * item_size, 0);
    memcpy(items, fs->items, fs->count * item_size);
    lua_replace(L, slot);
    fs->items = items;
    fs->cap = cap;
  }
  return (char *)fs->items + item_size * fs->count++;
}

/* ---- encoding ----------------------------------------------------------- */

/* What a string byte needs: 0 nothing, 1 an escape, 2 an escape if
 * forward slashes are escaped. */
static unsigned char escape_class[256];
static const char hex_digits[] = "0123456789abcdef";

static void init_tables(void);

/* Eight bytes at a time: does any byte of w equal one of the bytes that
 * stop a scan? Exact when it says no (false positives only send the scan
 * to its byte loop, which decides). */
#define SWAR_ONES 0x0101010101010101ULL
#define SWAR_HIGHS 0x8080808080808080ULL
#define SWAR_HAS_ZERO(v) (((v) - SWAR_ONES) & ~(v) & SWAR_HIGHS)
#define SWAR_HAS_BYTE(w, c) SWAR_HAS_ZERO((w) ^ (SWAR_ONES * (c)))

static inline uint64_t load8(const unsigned char *p) {
  uint64_t w;
  memcpy(&w, p, sizeof w);
  return w;
}

/* Bytes an encoded string must escape: controls, '"', '\\', DEL, and '/'
 * if asked. */
static inline int needs_escape8(uint64_t w, int escape_slash) {
  uint64_t hit = ((w - SWAR_ONES * 0x20) & ~w & SWAR_HIGHS) | SWAR_HAS_BYTE(w, '"') |
                 SWAR_HAS_BYTE(w, '\\') | SWAR_HAS_BYTE(w, 0x7f);
  if (escape_slash)
    hit |= SWAR_HAS_BYTE(w, '/');
  return hit != 0;
}

/* The first byte of s[i..len) that needs an escape, or len. */
static inline size_t plain_prefix(const unsigned char *s, size_t i, size_t len, int escape_slash) {
  const unsigned char mask = escape_slash ? 3 : 1;
  for (;;) {
    while (len - i >= 8 && !needs_escape8(load8(s + i), escape_slash))
      i += 8;
    size_t stop = len - i >= 8 ? i + 8 : len;
    while (i < stop && !(escape_class[s[i]] & mask))
      i++;
    if (i < stop || i == len)
      return i;
  }
}

static void append_string(json_buf *b, const char *s, size_t len, int escape_slash) {
  const unsigned char *p = (const unsigned char *)s;
  size_t i = 0;
  if (len > SIZE_MAX - 16)
    luaL_error(b->L, "cjson: JSON text too large");
  /* Room for the text as is and both quotes; escapes reserve their extra. */
  buf_reserve(b, len + 2);
  b->box->data[b->len++] = '"';
  while (i < len) {
    size_t start = i;
    i = plain_prefix(p, i, len, escape_slash);
    memcpy(b->box->data + b->len, s + start, i - start);
    b->len += i - start;
    if (i == len)
      break;
    /* One byte becomes up to six; keep room for the rest and the quote. */
    buf_reserve(b, (len - i) + 6);
    char *out = b->box->data + b->len;
    unsigned char c = p[i++];
    char short_form = 0;
    switch (c) {
    case '"': short_form = '"'; break;
    case '\\': short_form = '\\'; break;
    case '/': short_form = '/'; break;
    case '\b': short_form = 'b'; break;
    case '\f': short_form = 'f'; break;
    case '\n': short_form = 'n'; break;
    case '\r': short_form = 'r'; break;
    case '\t': short_form = 't'; break;
    default: break;
    }
    if (short_form) {
      out[0] = '\\';
      out[1] = short_form;
      b->len += 2;
    } else {
      memcpy(out, "\\u00", 4);
      out[4] = hex_digits[c >> 4];
      out[5] = hex_digits[c & 15];
      b->len += 6;
    }
  }
  b->box->data[b->len++] = '"';
}

static void append_integer(json_buf *b, lua_Integer value) {
  char digits[24];
  char *end = digits + sizeof digits, *p = end;
  lua_Unsigned u = value < 0 ? (lua_Unsigned)0 - (lua_Unsigned)value : (lua_Unsigned)value;
  do {
    *--p = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (value < 0)
    *--p = '-';
  buf_add(b, p, (size_t)(end - p));
}

static const double powers_of_ten[] = {
    1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
    1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
};

/*
 * %.<precision>g without printf (whose floating point goes through
 * software long double in the guest: an order of magnitude slower).
 *
 * d = m * 2^e exactly. With k = floor(log10 d), the digits are
 * q = d * 10^s rounded, s = precision - 1 - k: computed exactly in 128-bit
 * integers (m * 5^s shifted, or m * 2^e divided by 10^-s), so the rounding
 * decision sees the exact remainder: round half to even, like printf. Values
 * outside the exact range (below ~1e-19, above 2^128, subnormals) return 0
 * and are left to snprintf.
 */
typedef unsigned __int128 u128;
static u128 pow5_128[33];  /* 5^0 .. 5^32 */
static u128 pow10_128[39]; /* 10^0 .. 10^38 */

/* floor(d * 10^s) into *q and how the remainder compares with one half
 * (-1, 0, 1; -2 if there is none); 0 if out of the exact range. */
static int scaled_digits(uint64_t m, int e, int s, uint64_t *q, int *half) {
  u128 x, divisor, quotient, remainder;
  if (s >= 0) {
    if (s > 32)
      return 0;
    x = (u128)m * pow5_128[s]; /* < 2^53 * 5^32 < 2^128 */
    int shift = e + s;         /* d * 10^s = x * 2^shift */
    if (shift >= 0) {
      if (shift > 10 || (shift > 0 && (x >> (128 - shift)) != 0) || ((x << shift) >> 64) != 0)
        return 0;
      *q = (uint64_t)(x << shift);
      *half = -2;
      return 1;
    }
    shift = -shift;
    if (shift >= 128)
      return 0;
    quotient = x >> shift;
    remainder = x & (((u128)1 << shift) - 1);
    divisor = (u128)1 << shift;
  } else {
    if (-s > 38)
      return 0;
    divisor = pow10_128[-s];
    if (e >= 0) {
      if (e > 74)
        return 0;
      x = (u128)m << e;
    } else {
      if (-e >= 128 || (divisor >> (127 + e)) != 0)
        return 0;
      x = m;
      divisor <<= -e;
    }
    quotient = x / divisor;
    remainder = x % divisor;
  }
  if (quotient >> 64)
    return 0;
  *q = (uint64_t)quotient;
  if (remainder == 0)
    *half = -2;
  else if (remainder < divisor - remainder)
    *half = -1;
  else
    *half = remainder == divisor - remainder ? 0 : 1;
  return 1;
}

static const uint64_t pow10_u64[] = {
    1ULL,
    10ULL,
    100ULL,
    1000ULL,
    10000ULL,
    100000ULL,
    1000000ULL,
    10000000ULL,
    100000000ULL,
    1000000000ULL,
    10000000000ULL,
    100000000000ULL,
    1000000000000ULL,
    10000000000000ULL,
    100000000000000ULL,
    1000000000000000ULL,
    10000000000000000ULL,
    100000000000000000ULL,
};

/* %.<precision>g of a finite d, precision 1..16, into out (room for 32);
 * its length, or 0 when out of the exact range. */
static int format_g(char *out, double d, int precision) {
  uint64_t bits;
  memcpy(&bits, &d, sizeof bits);
  int negative = (int)(bits >> 63);
  int biased = (int)((bits >> 52) & 0x7FF);
  if (biased == 0)
    return 0; /* zero and subnormals */
  uint64_t m = (bits & ((1ULL << 52) - 1)) | (1ULL << 52);
  int e = biased - 1075;
  /* d lies in [2^(e+52), 2^(e+53)): k is this estimate or one more. */
  int k = (int)floor((e + 52) * 0.30102999566398119521);
  uint64_t q = 0;
  int half = -2, found = 0;
  for (int attempt = 0; attempt < 3 && !found; attempt++) {
    if (!scaled_digits(m, e, precision - 1 - k, &q, &half))
      return 0;
    if (q < pow10_u64[precision - 1])
      k--;
    else if (q >= pow10_u64[precision])
      k++;
    else
      found = 1;
  }
  if (!found)
    return 0;
  if (half > 0 || (half == 0 && (q & 1)))
    q++;
  if (q == pow10_u64[precision]) {
    q = pow10_u64[precision - 1];
    k++;
  }
  char digits[20];
  int nd = precision;
  for (int i = nd - 1; i >= 0; i--) {
    digits[i] = (char)('0' + q % 10);
    q /= 10;
  }
  while (nd > 1 && digits[nd - 1] == '0')
    nd--; /* %g drops trailing zeros */
  char *o = out;
  if (negative)
    *o++ = '-';
  if (k >= -4 && k < precision) {
    if (k >= 0) {
      for (int i = 0; i <= k; i++)
        *o++ = i < nd ? digits[i] : '0';
      if (nd > k + 1) {
        *o++ = '.';
        for (int i = k + 1; i < nd; i++)
          *o++ = digits[i];
      }
    } else {
      *o++ = '0';
      *o++ = '.';
      for (int i = -1; i > k; i--)
        *o++ = '0';
      for (int i = 0; i < nd; i++)
        *o++ = digits[i];
    }
  } else {
    *o++ = digits[0];
    if (nd > 1) {
      *o++ = '.';
      for (int i = 1; i < nd; i++)
        *o++ = digits[i];
    }
    *o++ = 'e';
    *o++ = k < 0 ? '-' : '+';
    int x = k < 0 ? -k : k;
    if (x >= 100)
      *o++ = (char)('0' + x / 100);
    *o++ = (char)('0' + x / 10 % 10);
    *o++ = (char)('0' + x % 10);
  }
  return (int)(o - out);
}

/* The number at `index`: integers exactly, floats with %.<precision>g. */
static void append_number(lua_State *L, json_config *cfg, json_buf *b, int index) {
  if (lua_isinteger(L, index)) {
    append_integer(b, lua_tointeger(L, index));
    return;
  }
  double d = lua_tonumber(L, index);
  if (isnan(d) || isinf(d)) {
    switch (cfg->encode_invalid_numbers) {
    case 0:
      luaL_error(L, "Cannot serialise number: must not be NaN or Infinity");
      return;
    case 1:
      if (isnan(d))
        buf_add(b, "NaN", 3);
      else if (d < 0)
        buf_add(b, "-Infinity", 9);
      else
        buf_add(b, "Infinity", 8);
      return;
    default:
      buf_add(b, "null", 4);
      return;
    }
  }
  int precision = cfg->number_precision;
  /* Integral values that %.<precision>g prints in full: as integers. */
  if (d == floor(d) && fabs(d) < powers_of_ten[precision] && !(d == 0 && signbit(d))) {
    append_integer(b, (lua_Integer)d);
    return;
  }
  char text[40];
  int n = format_g(text, d, precision);
  if (n == 0)
    n = snprintf(text, sizeof text, "%.*g", precision, d);
  if (n < 0 || (size_t)n >= sizeof text)
    luaL_error(L, "cjson: cannot format number");
  buf_add(b, text, (size_t)n);
}

/* The length of the table at the top if it is an array (positive integer
 * keys only), -1 if it is an object. Sparse arrays as lua-cjson: an error,
 * or an object when encode_sparse_array's `convert` is on. */
static lua_Integer array_length(lua_State *L, json_config *cfg) {
  lua_Integer max = 0, items = 0;
  lua_pushnil(L);
  while (lua_next(L, -2) != 0) {
    lua_pop(L, 1);
    lua_Integer k;
    if (!lua_isinteger(L, -1) || (k = lua_tointeger(L, -1)) < 1) {
      lua_pop(L, 1);
      return -1;
    }
    if (k > max)
      max = k;
    items++;
  }
  if (cfg->sparse_ratio > 0 && max > items * cfg->sparse_ratio && max > cfg->sparse_safe) {
    if (!cfg->sparse_convert)
      luaL_error(L, "Cannot serialise table: excessively sparse array");
    return -1;
  }
  return max;
}

enum { FRAME_ARRAY, FRAME_OBJECT };

typedef struct {
  lua_Integer next; /* arrays: the last index written */
  lua_Integer length;
  int kind;
  int raw;     /* arrays: read elements with rawgeti (else lua_geti) */
  int written; /* elements in the output (commas) */
  int visited; /* elements seen, skipped ones included (indenting) */
} enc_frame;

/* Encode-state stack slots. */
enum { ENC_VALUE = 1, ENC_BUF, ENC_INDENT, ENC_FRAMES };

static void append_indent(json_buf *b, const char *indent, size_t indent_len, int depth) {
  buf_addc(b, '\n');
  for (int i = 0; i < depth; i++)
    buf_add(b, indent, indent_len);
}

/* Decide how the table at the top is encoded; push its frame and write its
 * opening bracket. */
static void open_table(lua_State *L, json_config *cfg, json_buf *b, frame_stack *fs) {
  int as_array = 0, raw = 1;
  lua_Integer length = 0;
  int has_mt = lua_getmetatable(L, -1);
  if (has_mt) {
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_array_mt);
    int is_array_mt = lua_rawequal(L, -1, -2);
    lua_pop(L, 2);
    if (is_array_mt) {
      as_array = 1;
      length = luaL_len(L, -1);
    } else {
      raw = 0;
      if (luaL_getmetafield(L, -1, "__len") != LUA_TNIL) {
        lua_pushvalue(L, -2);
        lua_call(L, 1, 1);
        double n = lua_tonumber(L, -1);
        lua_pop(L, 1);
        length = n >= 1 ? (n < (double)INT_MAX ? (lua_Integer)n : INT_MAX) : 0;
        as_array = 1;
      }
    }
  }
  if (!as_array) {
    length = array_length(L, cfg);
    if (length > 0 || (length == 0 && !cfg->empty_table_as_object)) {
      as_array = 1;
    } else if (has_mt) {
      lua_getmetatable(L, -1);
      lua_rawgetp(L, LUA_REGISTRYINDEX, &key_empty_array_mt);
      int is_empty_array_mt = lua_rawequal(L, -1, -2);
      lua_pop(L, 2);
      if (is_empty_array_mt) {
        as_array = 1;
        raw = 1;
        length = luaL_len(L, -1);
      }
    }
  }
  enc_frame *f = (enc_frame *)frames_push(L, fs, ENC_FRAMES, sizeof(enc_frame));
  f->next = 0;
  f->length = length;
  f->raw = raw;
  f->written = 0;
  f->visited = 0;
  if (as_array) {
    f->kind = FRAME_ARRAY;
    buf_addc(b, '[');
  } else {
    f->kind = FRAME_OBJECT;
    buf_addc(b, '{');
    lua_pushnil(L); /* the traversal key */
  }
}

static int json_encode(lua_State *L) {
  json_config *cfg = get_config(L);
  luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
  json_buf b;
  buf_open(L, &b); /* ENC_BUF */
  const char *indent = NULL;
  size_t indent_len = 0;
  if (lua_getiuservalue(L, lua_upvalueindex(1), 1) == LUA_TSTRING) /* ENC_INDENT */
    indent = lua_tolstring(L, ENC_INDENT, &indent_len);
  lua_pushnil(L); /* ENC_FRAMES */
  enc_frame first_frames[32];
  frame_stack fs = {first_frames, 0, 32};
  int depth = 0;
  size_t element_start = 0; /* where the current element's text begins */
  lua_pushvalue(L, ENC_VALUE);
  for (;;) {
    /* Write the value at the top of the stack. */
    switch (lua_type(L, -1)) {
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, -1, &len);
      append_string(&b, s, len, cfg->escape_forward_slash);
      lua_pop(L, 1);
      break;
    }
    case LUA_TNUMBER:
      append_number(L, cfg, &b, -1);
      lua_pop(L, 1);
      break;
    case LUA_TBOOLEAN:
      if (lua_toboolean(L, -1))
        buf_add(&b, "true", 4);
      else
        buf_add(&b, "false", 5);
      lua_pop(L, 1);
      break;
    case LUA_TNIL:
      buf_add(&b, "null", 4);
      lua_pop(L, 1);
      break;
    case LUA_TTABLE:
      depth++;
      /* table, key, value, metatable, registry value, __len result */
      if (depth > cfg->encode_max_depth || !lua_checkstack(L, 6))
        luaL_error(L, "Cannot serialise, excessive nesting (%d)", depth);
      open_table(L, cfg, &b, &fs); /* the table stays while it is written */
      break;
    case LUA_TLIGHTUSERDATA: {
      void *p = lua_touserdata(L, -1);
      if (p == NULL) {
        buf_add(&b, "null", 4);
        lua_pop(L, 1);
        break;
      }
      if (p == &empty_array_tag) {
        buf_add(&b, "[]", 2);
        lua_pop(L, 1);
        break;
      }
      goto unsupported; /* other light userdata */
    }
    default:
    unsupported:
      if (!cfg->skip_unsupported)
        luaL_error(L, "Cannot serialise %s: type not supported", luaL_typename(L, -1));
      b.len = element_start; /* drop the element: its comma, key and indent */
      if (fs.count > 0)
        ((enc_frame *)fs.items)[fs.count - 1].written--;
      lua_pop(L, 1);
      break;
    }

    /* Move to the next element, closing what is complete. */
    for (;;) {
      if (fs.count == 0)
        goto done;
      enc_frame *f = (enc_frame *)fs.items + (fs.count - 1);
      if (f->kind == FRAME_ARRAY) {
        if (f->next < f->length) {
          f->next++;
          f->visited = 1;
          element_start = b.len;
          if (f->written++ > 0)
            buf_addc(&b, ',');
          if (indent)
            append_indent(&b, indent, indent_len, depth);
          if (f->raw)
            lua_rawgeti(L, -1, f->next);
          else
            lua_geti(L, -1, f->next);
          break;
        }
        if (f->visited && indent)
          append_indent(&b, indent, indent_len, depth - 1);
        buf_addc(&b, ']');
      } else {
        /* table, key */
        if (lua_next(L, -2) != 0) {
          /* table, key, value */
          f->visited = 1;
          element_start = b.len;
          if (f->written++ > 0)
            buf_addc(&b, ',');
          if (indent)
            append_indent(&b, indent, indent_len, depth);
          int key_type = lua_type(L, -2);
          if (key_type == LUA_TSTRING) {
            size_t len;
            const char *s = lua_tolstring(L, -2, &len);
            append_string(&b, s, len, cfg->escape_forward_slash);
            buf_addc(&b, ':');
          } else if (key_type == LUA_TNUMBER) {
            buf_addc(&b, '"');
            append_number(L, cfg, &b, -2);
            buf_add(&b, "\":", 2);
          } else {
            luaL_error(L, "Cannot serialise %s: table key must be a number or string",
                       luaL_typename(L, -2));
          }
          if (indent)
            buf_addc(&b, ' ');
          break;
        }
        if (f->visited && indent)
          append_indent(&b, indent, indent_len, depth - 1);
        buf_addc(&b, '}');
      }
      lua_pop(L, 1); /* the finished table */
      fs.count--;
      depth--;
    }
  }
done:
  lua_pushlstring(L, b.len ? b.box->data : "", b.len);
  buf_free(&b);
  return 1;
}

/* ---- decoding ----------------------------------------------------------- */

typedef enum {
  T_OBJ_BEGIN,
  T_OBJ_END,
  T_ARR_BEGIN,
  T_ARR_END,
  T_STRING,
  T_NUMBER,
  T_INTEGER,
  T_BOOLEAN,
  T_NULL,
  T_COLON,
  T_COMMA,
  T_END,
  T_ERROR,
} token_type;

static const char *const token_names[] = {
    "T_OBJ_BEGIN", "T_OBJ_END", "T_ARR_BEGIN", "T_ARR_END", "T_STRING",
    "T_NUMBER",    "T_INTEGER", "T_BOOLEAN",   "T_NULL",    "T_COLON",
    "T_COMMA",     "T_END",     "T_ERROR",
};

typedef struct {
  token_type type;
  size_t index;      /* where the token (or its error) starts, from 0 */
  const char *error; /* T_ERROR: what is wrong */
} token;

typedef struct {
  lua_State *L;
  json_config *cfg;
  const unsigned char *start;
  const unsigned char *p;
  const unsigned char *end; /* *end is the '\0' every Lua string ends with */
  int depth;
  json_buf scratch; /* for strings with escapes; box created on first use */
} dec_state;

/* Decode-state stack slots. */
enum { DEC_TEXT = 1, DEC_SCRATCH, DEC_FRAMES, DEC_ARRAY_MT };

static unsigned char is_space[256];
/* Bytes that end a run of plain string content: '"', '\\' and '\0'. */
static unsigned char string_stop[256];
static signed char hex_value[256];

static void init_tables(void) {
  static int done;
  if (done)
    return;
  done = 1;
  for (int c = 0; c < 0x20; c++)
    escape_class[c] = 1;
  escape_class['"'] = 1;
  escape_class['\\'] = 1;
  escape_class[0x7f] = 1;
  escape_class['/'] = 2;
  pow5_128[0] = 1;
  for (int i = 1; i < 33; i++)
    pow5_128[i] = pow5_128[i - 1] * 5;
  pow10_128[0] = 1;
  for (int i = 1; i < 39; i++)
    pow10_128[i] = pow10_128[i - 1] * 10;
  is_space[' '] = is_space['\t'] = is_space['\n'] = is_space['\r'] = 1;
  string_stop['"'] = string_stop['\\'] = string_stop[0] = 1;
  for (int c = 0; c < 256; c++)
    hex_value[c] = -1;
  for (int c = 0; c < 10; c++)
    hex_value['0' + c] = (signed char)c;
  for (int c = 0; c < 6; c++) {
    hex_value['a' + c] = (signed char)(10 + c);
    hex_value['A' + c] = (signed char)(10 + c);
  }
}

static void set_error(token *t, dec_state *ds, const unsigned char *where, const char *what) {
  t->type = T_ERROR;
  t->index = (size_t)(where - ds->start);
  t->error = what;
}

static _Noreturn void parse_error(dec_state *ds, const char *expected, const token *t) {
  const char *found = t->type == T_ERROR ? t->error : token_names[t->type];
  luaL_error(ds->L, "Expected %s but found %s at character %I", expected, found,
             (LUAI_UACINT)((lua_Integer)t->index + 1));
  abort(); /* luaL_error does not return */
}

static int hex4(const unsigned char *p) {
  int v = 0;
  for (int i = 0; i < 4; i++) {
    int d = hex_value[p[i]];
    if (d < 0)
      return -1;
    v = (v << 4) | d;
  }
  return v;
}

/* The \u escape at `p` (its backslash) into the scratch buffer; the bytes
 * it used, or 0 if it is invalid. Surrogate pairs become one code point. */
static size_t unicode_escape(dec_state *ds, const unsigned char *p) {
  if (ds->end - p < 6)
    return 0;
  int cp = hex4(p + 2);
  if (cp < 0)
    return 0;
  size_t used = 6;
  if ((cp & 0xF800) == 0xD800) {
    if (cp & 0x400) /* a low surrogate first */
      return 0;
    if (ds->end - p < 12 || p[6] != '\\' || p[7] != 'u')
      return 0;
    int low = hex4(p + 8);
    if (low < 0 || (low & 0xFC00) != 0xDC00)
      return 0;
    cp = 0x10000 + (((cp & 0x3FF) << 10) | (low & 0x3FF));
    used = 12;
  }
  json_buf *b = &ds->scratch;
  buf_reserve(b, 4);
  char *out = b->box->data + b->len;
  if (cp < 0x80) {
    out[0] = (char)cp;
    b->len += 1;
  } else if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    b->len += 2;
  } else if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    b->len += 3;
  } else {
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    b->len += 4;
  }
  return used;
}

/* Skip plain string bytes from `q`: up to a quote, a backslash, or the end
 * of the text (raw control bytes, NUL included, are content, as in
 * lua-cjson). */
static inline const unsigned char *plain_run(const unsigned char *q, const unsigned char *end) {
  /* Short strings (keys) end within a few bytes: look at those one by one. */
  for (int i = 0; i < 8 && !string_stop[*q]; i++)
    q++;
  for (;;) {
    while (end - q >= 8) {
      uint64_t w = load8(q);
      if (SWAR_HAS_ZERO(w) | SWAR_HAS_BYTE(w, '"') | SWAR_HAS_BYTE(w, '\\'))
        break;
      q += 8;
    }
    while (!string_stop[*q])
      q++;
    if (*q != 0 || q >= end)
      return q;
    q++; /* a NUL byte inside the text */
  }
}

/* The string token whose quote is at `p`: pushes the string. */
static void string_token(dec_state *ds, const unsigned char *p, token *t) {
  const unsigned char *content = p + 1;
  const unsigned char *q = plain_run(content, ds->end);
  if (q < ds->end && *q == '"') {
    lua_pushlstring(ds->L, (const char *)content, (size_t)(q - content));
    ds->p = q + 1;
    t->type = T_STRING;
    return;
  }
  json_buf *b = &ds->scratch;
  if (b->box == NULL) {
    buf_open(ds->L, b);
    lua_replace(ds->L, DEC_SCRATCH);
  }
  b->len = 0;
  buf_add(b, (const char *)content, (size_t)(q - content));
  for (;;) {
    if (q >= ds->end) {
      set_error(t, ds, q, "unexpected end of string");
      return;
    }
    if (*q == '"')
      break;
    /* a backslash */
    char c;
    switch (q[1]) {
    case '"': c = '"'; break;
    case '\\': c = '\\'; break;
    case '/': c = '/'; break;
    case 'b': c = '\b'; break;
    case 'f': c = '\f'; break;
    case 'n': c = '\n'; break;
    case 'r': c = '\r'; break;
    case 't': c = '\t'; break;
    case 'u': {
      size_t used = unicode_escape(ds, q);
      if (used == 0) {
        set_error(t, ds, q, "invalid unicode escape code");
        return;
      }
      q += used;
      goto run;
    }
    default:
      set_error(t, ds, q, "invalid escape code");
      return;
    }
    buf_addc(b, c);
    q += 2;
  run : {
    const unsigned char *r = q;
    q = plain_run(q, ds->end);
    buf_add(b, (const char *)r, (size_t)(q - r));
  }
  }
  lua_pushlstring(ds->L, b->box->data, b->len);
  ds->p = q + 1;
  t->type = T_STRING;
}

/* lua-cjson's test for numbers strict JSON refuses: a leading '+', hex,
 * leading zeros, inf and nan. */
static int is_invalid_number(const unsigned char *p) {
  if (*p == '+')
    return 1;
  if (*p == '-')
    p++;
  if (*p == '0') {
    int c = p[1];
    return (c | 0x20) == 'x' || (c >= '0' && c <= '9');
  }
  if (*p <= '9')
    return 0;
  return strncasecmp((const char *)p, "inf", 3) == 0 || strncasecmp((const char *)p, "nan", 3) == 0;
}

/* A plain decimal number read exactly without strtod (Clinger's fast
 * path): at most 19 significant digits, a mantissa up to 2^53 and a power
 * of ten up to 22 each way, so one correctly rounded operation gives the
 * exact result. Returns 0 for anything else; *end is what strtod would
 * consume. */
static int fast_decimal(const unsigned char *p, double *out, const unsigned char **end) {
  const unsigned char *q = p;
  int negative = 0;
  if (*q == '-' || *q == '+') {
    negative = *q == '-';
    q++;
  }
  uint64_t mantissa = 0;
  int significant = 0, exponent = 0;
  const unsigned char *digits = q;
  while (*q >= '0' && *q <= '9') {
    if (mantissa != 0 || *q != '0') {
      if (++significant > 19)
        return 0;
      mantissa = mantissa * 10 + (uint64_t)(*q - '0');
    }
    q++;
  }
  if (q == digits)
    return 0; /* ".5", "inf", ... */
  if ((*q | 0x20) == 'x')
    return 0; /* hexadecimal */
  if (*q == '.') {
    q++;
    while (*q >= '0' && *q <= '9') {
      if (mantissa != 0 || *q != '0') {
        if (++significant > 19)
          return 0;
        mantissa = mantissa * 10 + (uint64_t)(*q - '0');
      }
      exponent--;
      q++;
    }
  }
  if ((*q | 0x20) == 'e') {
    const unsigned char *e = q + 1;
    int exp_negative = 0;
    if (*e == '-' || *e == '+') {
      exp_negative = *e == '-';
      e++;
    }
    if (*e >= '0' && *e <= '9') {
      int value = 0;
      while (*e >= '0' && *e <= '9') {
        if (value > 100000)
          return 0;
        value = value * 10 + (*e - '0');
        e++;
      }
      exponent += exp_negative ? -value : value;
      q = e;
    }
  }
  double d;
  if (mantissa == 0) {
    d = 0.0;
  } else {
    if (mantissa > ((uint64_t)1 << 53) || exponent < -22 || exponent > 22)
      return 0;
    d = (double)mantissa;
    d = exponent < 0 ? d / powers_of_ten[-exponent] : d * powers_of_ten[exponent];
  }
  *out = negative ? -d : d;
  *end = q;
  return 1;
}

/* The number token at `p`: pushes an integer if it is one (no fraction,
 * exponent or hex, and it fits), else a float. */
static void number_token(dec_state *ds, const unsigned char *p, token *t) {
  const unsigned char *q = p;
  int negative = 0;
  if (*q == '-' || *q == '+') {
    negative = *q == '-';
    q++;
  }
  const unsigned char *digits = q;
  uint64_t value = 0;
  int overflow = 0;
  while (*q >= '0' && *q <= '9') {
    unsigned d = (unsigned)(*q - '0');
    if (value > (UINT64_MAX - d) / 10)
      overflow = 1;
    else
      value = value * 10 + d;
    q++;
  }
  if (q > digits && *q != '.' && (*q | 0x20) != 'e' && (*q | 0x20) != 'x') {
    uint64_t limit = negative ? (uint64_t)1 << 63 : ((uint64_t)1 << 63) - 1;
    if (!overflow && value <= limit) {
      lua_Integer n = negative ? (lua_Integer)(0 - value) : (lua_Integer)value;
      lua_pushinteger(ds->L, n);
      ds->p = q;
      t->type = T_INTEGER;
      return;
    }
  }
  double d;
  const unsigned char *end;
  if (!fast_decimal(p, &d, &end)) {
    char *strtod_end;
    d = strtod((const char *)p, &strtod_end);
    end = (const unsigned char *)strtod_end;
  }
  if (end == p || end > ds->end) {
    set_error(t, ds, p, "invalid number");
    return;
  }
  lua_pushnumber(ds->L, d);
  ds->p = end;
  t->type = T_NUMBER;
}

/* The next token. Scalars (strings, numbers, booleans, null) are pushed
 * onto the Lua stack as they are read. */
static void next_token(dec_state *ds, token *t) {
  const unsigned char *p = ds->p;
  for (;;) {
    while (is_space[*p])
      p++;
    if (!ds->cfg->allow_comment || *p != '/' || (p[1] != '/' && p[1] != '*'))
      break;
    if (p[1] == '/') {
      p += 2;
      while (p < ds->end && *p != '\n')
        p++;
    } else {
      const unsigned char *q = p + 2;
      while (q < ds->end && !(q[0] == '*' && q[1] == '/'))
        q++;
      if (q >= ds->end) {
        ds->p = q;
        set_error(t, ds, q, "unclosed multi-line comment");
        return;
      }
      p = q + 2;
    }
  }
  ds->p = p;
  t->index = (size_t)(p - ds->start);
  if (p >= ds->end) {
    t->type = T_END;
    return;
  }
  switch (*p) {
  case '{': t->type = T_OBJ_BEGIN; ds->p = p + 1; return;
  case '}': t->type = T_OBJ_END; ds->p = p + 1; return;
  case '[': t->type = T_ARR_BEGIN; ds->p = p + 1; return;
  case ']': t->type = T_ARR_END; ds->p = p + 1; return;
  case ':': t->type = T_COLON; ds->p = p + 1; return;
  case ',': t->type = T_COMMA; ds->p = p + 1; return;
  case '"': string_token(ds, p, t); return;
  case '-':
  case '0': case '1': case '2': case '3': case '4':
  case '5': case '6': case '7': case '8': case '9':
    if (!ds->cfg->decode_invalid_numbers && is_invalid_number(p)) {
      set_error(t, ds, p, "invalid number");
      return;
    }
    number_token(ds, p, t);
    return;
  case 't':
    if (ds->end - p >= 4 && memcmp(p, "true", 4) == 0) {
      lua_pushboolean(ds->L, 1);
      t->type = T_BOOLEAN;
      ds->p = p + 4;
      return;
    }
    break;
  case 'f':
    if (ds->end - p >= 5 && memcmp(p, "false", 5) == 0) {
      lua_pushboolean(ds->L, 0);
      t->type = T_BOOLEAN;
      ds->p = p + 5;
      return;
    }
    break;
  case 'n':
    if (ds->end - p >= 4 && memcmp(p, "null", 4) == 0) {
      lua_pushlightuserdata(ds->L, NULL);
      t->type = T_NULL;
      ds->p = p + 4;
      return;
    }
    break;
  default:
    break;
  }
  /* Inf, NaN, +1 and the like, when decode_invalid_numbers allows them. */
  if (ds->cfg->decode_invalid_numbers && is_invalid_number(p)) {
    number_token(ds, p, t);
    return;
  }
  set_error(t, ds, p, "invalid token");
}

/* Enter an array or object: the depth bound, and stack room for the
 * table, a key and a value. */
static void descend(dec_state *ds, int slots) {
  ds->depth++;
  if (ds->depth > ds->cfg->decode_max_depth || !lua_checkstack(ds->L, slots))
    luaL_error(ds->L, "Found too many nested data structures (%d) at character %I", ds->depth,
               (LUAI_UACINT)(lua_Integer)(ds->p - ds->start));
}

/* A decode frame: the entries of an open container so far, times two,
 * plus one for an object. */
#define FRAME_IS_OBJECT(f) ((f) & 1)
#define FRAME_ENTRIES(f) ((f) >> 1)

/* Sibling containers at one depth usually have the same shape (arrays of
 * records): each new table is sized like the last one closed at its depth,
 * which saves Lua's rehashing as it grows. Bounded, so a wrong guess costs
 * little. */
#define HINT_DEPTHS 32
#define HINT_MAX 64

static void close_container(dec_state *ds, frame_stack *fs, int *hints) {
  lua_Integer frame = ((lua_Integer *)fs->items)[fs->count - 1];
  if (ds->depth < HINT_DEPTHS) {
    lua_Integer entries = FRAME_ENTRIES(frame);
    hints[2 * ds->depth + FRAME_IS_OBJECT(frame)] = entries < HINT_MAX ? (int)entries : HINT_MAX;
  }
  fs->count--;
  ds->depth--;
}

static void open_container(dec_state *ds, frame_stack *fs, int *hints, int object) {
  lua_State *L = ds->L;
  descend(ds, object ? 4 : 3); /* table, key, value, and a spare for errors */
  int hint = ds->depth < HINT_DEPTHS ? hints[2 * ds->depth + object] : 0;
  lua_createtable(L, object ? 0 : hint, object ? hint : 0);
  if (!object && ds->cfg->decode_array_with_array_mt) {
    lua_pushvalue(L, DEC_ARRAY_MT);
    lua_setmetatable(L, -2);
  }
  *(lua_Integer *)frames_push(L, fs, DEC_FRAMES, sizeof(lua_Integer)) = object;
}

static int json_decode(lua_State *L) {
  json_config *cfg = get_config(L);
  luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
  size_t len;
  const char *text = luaL_checklstring(L, DEC_TEXT, &len);
  /* JSON text starts with an ASCII character: a NUL among the first two
   * bytes means UTF-16 or UTF-32. */
  if (len >= 2 && (text[0] == 0 || text[1] == 0))
    luaL_error(L, "JSON parser does not support UTF-16 or UTF-32");
  lua_pushnil(L); /* DEC_SCRATCH */
  lua_pushnil(L); /* DEC_FRAMES */
  if (cfg->decode_array_with_array_mt) /* DEC_ARRAY_MT */
    lua_rawgetp(L, LUA_REGISTRYINDEX, &key_array_mt);
  else
    lua_pushnil(L);

  dec_state ds;
  ds.L = L;
  ds.cfg = cfg;
  ds.start = (const unsigned char *)text;
  ds.p = ds.start;
  ds.end = ds.start + len;
  ds.depth = 0;
  ds.scratch.L = L;
  ds.scratch.box = NULL;
  ds.scratch.len = 0;
  lua_Integer first_frames[64];
  frame_stack fs = {first_frames, 0, 64};
  int hints[2 * HINT_DEPTHS] = {0};
  token t;

  if (!lua_checkstack(L, 3))
    luaL_error(L, "Found too many nested data structures (0) at character 1");
  next_token(&ds, &t);
  for (;;) {
    /* A value starting with token t. */
    switch (t.type) {
    case T_OBJ_BEGIN:
      open_container(&ds, &fs, hints, 1);
      next_token(&ds, &t);
      if (t.type == T_OBJ_END)
        break; /* {} */
      goto object_key;
    case T_ARR_BEGIN:
      open_container(&ds, &fs, hints, 0);
      next_token(&ds, &t);
      if (t.type == T_ARR_END)
        break; /* [] */
      continue;
    case T_STRING:
    case T_NUMBER:
    case T_INTEGER:
    case T_BOOLEAN:
    case T_NULL:
      goto value_done; /* already pushed */
    default:
      parse_error(&ds, "value", &t);
    }
    /* An empty container was closed: it is the value. */
    close_container(&ds, &fs, hints);

  value_done:
    /* A complete value is at the top: store it in its container. */
    while (fs.count > 0) {
      lua_Integer *frame = (lua_Integer *)fs.items + (fs.count - 1);
      *frame += 2;
      if (FRAME_IS_OBJECT(*frame)) {
        lua_rawset(L, -3);
        next_token(&ds, &t);
        if (t.type == T_COMMA) {
          next_token(&ds, &t);
          goto object_key;
        }
        if (t.type != T_OBJ_END)
          parse_error(&ds, "comma or object end", &t);
      } else {
        lua_rawseti(L, -2, FRAME_ENTRIES(*frame));
        next_token(&ds, &t);
        if (t.type == T_COMMA) {
          next_token(&ds, &t);
          goto next_value;
        }
        if (t.type != T_ARR_END)
          parse_error(&ds, "comma or array end", &t);
      }
      /* The container is complete: it is the value to store. */
      close_container(&ds, &fs, hints);
    }
    break; /* the top-level value is complete */

  object_key:
    if (t.type != T_STRING)
      parse_error(&ds, "object key string", &t);
    next_token(&ds, &t);
    if (t.type != T_COLON)
      parse_error(&ds, "colon", &t);
    next_token(&ds, &t);
  next_value:;
  }

  next_token(&ds, &t);
  if (t.type != T_END)
    parse_error(&ds, "the end", &t);
  buf_free(&ds.scratch);
  return 1;
}

/* ---- the modules -------------------------------------------------------- */

/* cjson.safe's encode and decode: nil and the message instead of an error
 * (argument-count errors still raise, as in lua-cjson). */
static int safe_call(lua_State *L) {
  luaL_argcheck(L, lua_gettop(L) == 1, 1, "expected 1 argument");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_insert(L, 1);
  int status = lua_pcall(L, 1, 1, 0);
  if (status == LUA_OK)
    return 1;
  if (status == LUA_ERRRUN) {
    lua_pushnil(L);
    lua_insert(L, -2);
    return 2;
  }
  return lua_error(L);
}

static int push_module(lua_State *L, int safe);

static int json_new(lua_State *L) { return push_module(L, 0); }
static int json_safe_new(lua_State *L) { return push_module(L, 1); }

static const luaL_Reg module_functions[] = {
    {"encode", json_encode},
    {"decode", json_decode},
    {"encode_empty_table_as_object", cfg_encode_empty_table_as_object},
    {"decode_array_with_array_mt", cfg_decode_array_with_array_mt},
    {"decode_allow_comment", cfg_decode_allow_comment},
    {"encode_sparse_array", cfg_encode_sparse_array},
    {"encode_max_depth", cfg_encode_max_depth},
    {"decode_max_depth", cfg_decode_max_depth},
    {"encode_number_precision", cfg_encode_number_precision},
    {"encode_keep_buffer", cfg_encode_keep_buffer},
    {"encode_invalid_numbers", cfg_encode_invalid_numbers},
    {"decode_invalid_numbers", cfg_decode_invalid_numbers},
    {"encode_escape_forward_slash", cfg_encode_escape_forward_slash},
    {"encode_skip_unsupported_value_types", cfg_encode_skip_unsupported_value_types},
    {"encode_indent", cfg_encode_indent},
    {NULL, NULL},
};

/* The tables every instance shares (array_mt, empty_array_mt) and the
 * buffers' metatable, made once per Lua state. */
static void ensure_shared(lua_State *L) {
  init_tables();
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &key_buffer_mt) != LUA_TNIL) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_pushliteral(L, "cjson buffer");
  lua_setfield(L, -2, "__name");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_buffer_mt);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_array_mt);
  lua_newtable(L);
  lua_rawsetp(L, LUA_REGISTRYINDEX, &key_empty_array_mt);
}

/* A module table with its own configuration. */
static int push_module(lua_State *L, int safe) {
  ensure_shared(L);
  lua_createtable(L, 0, 24);
  json_config *cfg = (json_config *)lua_newuserdatauv(L, sizeof(json_config), 1);
  default_config(cfg);
  luaL_setfuncs(L, module_functions, 1);
  lua_pushcfunction(L, safe ? json_safe_new : json_new);
  lua_setfield(L, -2, "new");
  if (safe) {
    static const char *const wrapped[] = {"encode", "decode"};
    for (int i = 0; i < 2; i++) {
      lua_getfield(L, -1, wrapped[i]);
      lua_pushcclosure(L, safe_call, 1);
      lua_setfield(L, -2, wrapped[i]);
    }
  }
  lua_pushlightuserdata(L, NULL); /* the same value as ngx.null */
  lua_setfield(L, -2, "null");
  lua_pushlightuserdata(L, &empty_array_tag);
  lua_setfield(L, -2, "empty_array");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_array_mt);
  lua_setfield(L, -2, "array_mt");
  lua_rawgetp(L, LUA_REGISTRYINDEX, &key_empty_array_mt);
  lua_setfield(L, -2, "empty_array_mt");
  lua_pushliteral(L, CJSON_NAME);
  lua_setfield(L, -2, "_NAME");
  lua_pushliteral(L, CJSON_VERSION);
  lua_setfield(L, -2, "_VERSION");
  return 1;
}

int moonwall_open_cjson(lua_State *L) { return push_module(L, 0); }

int moonwall_open_cjson_safe(lua_State *L) { return push_module(L, 1); }
