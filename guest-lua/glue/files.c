/*
 * The io library (read-only files), os.getenv, and the lib_dirs searcher of
 * `require`, each on the host's wit/files.wit (`files`, `env`).
 *
 * Every check is the host's: which directories are granted, that a path
 * stays inside one, that the file is a regular file, the bounds on open
 * files and on bytes per read. This side shapes Lua's API: a file object
 * buffers what it reads (at most BUFFER_SIZE bytes per host call for lines
 * and numbers, HOST_READ_MAX for bulk reads), so that its position is the
 * host's minus what is still buffered.
 *
 *   io.open(path [, mode])   mode "r"/"rb" only
 *   io.lines(path, ...)      closes the file at its end
 *   io.close(file), io.type(x)
 *   io.write(...), io.stdout the run's output (as print's), write-only; a
 *                          plain table, so that no userdata is reachable
 *                          from _G
 *   file:read/lines/seek/close/write/flush/setvbuf, __gc, __close
 *   os.getenv(name)          nil, message when the name is not granted
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "glue.h"
#include "lauxlib.h"
#include "lua.h"
#include "sandbox.h"

void moonwall_write_stdout(const char *bytes, size_t len);

#define FILE_META "FILE*"
/* Bytes a file object buffers (one host read each refill). */
#define BUFFER_SIZE 16384
/* Bytes asked of the host at once by bulk reads (the host's own bound). */
#define HOST_READ_MAX 65536
/* The longest numeral "n" reads, as in Lua. */
#define MAX_NUMERAL 200

enum kind { KIND_CLOSED, KIND_READ };

/* Where io.stdout is kept (the registry: out of scripts' reach). */
#define STDOUT_KEY "moonwall.io.stdout"

/* errno values Lua scripts see in io's third results. */
#define CODE_EBADF 9
#define CODE_EINVAL 22
#define CODE_EMFILE 24
#define CODE_ESPIPE 29
#define CODE_EROFS 30

typedef struct {
  int kind;
  uint32_t id; /* the host's open file */
  size_t start, end; /* buffered bytes: buffer[start .. end) */
  /* A read that failed on the host: reported by the read call it is in. */
  int failed;
  int32_t error_code;
  char error[200];
  unsigned char buffer[]; /* BUFFER_SIZE bytes */
} mfile;

/* ---- host calls ------------------------------------------------------- */

static void keep_failure(mfile *f, moonwall_sandbox_files_failure_t *failure) {
  size_t len = failure->message.len < sizeof(f->error) - 1 ? failure->message.len : sizeof(f->error) - 1;
  memcpy(f->error, failure->message.ptr, len);
  f->error[len] = '\0';
  f->error_code = failure->code;
  f->failed = 1;
  moonwall_sandbox_files_failure_free(failure);
}

/* Read up to `max` bytes from the host into `out`: 1, or 0 on failure
 * (kept in the file for the read call to report). */
static int host_read(mfile *f, size_t max, sandbox_list_u8_t *out) {
  moonwall_sandbox_files_failure_t failure;
  if (!moonwall_sandbox_files_read(f->id, (uint32_t)max, out, &failure)) {
    keep_failure(f, &failure);
    return 0;
  }
  if (out->len > max) { /* never trusted to fit otherwise */
    sandbox_list_u8_free(out);
    f->failed = 1;
    f->error_code = CODE_EINVAL;
    strcpy(f->error, "io: the host returned more than asked");
    return 0;
  }
  return 1;
}

static void host_close(mfile *f) {
  if (f->kind == KIND_READ)
    moonwall_sandbox_files_close(f->id);
  f->kind = KIND_CLOSED;
  f->start = f->end = 0;
}

/* Refill an empty buffer: 1 if bytes are buffered, 0 at the end of the
 * file, -1 on failure. */
static int fill(mfile *f) {
  if (f->start < f->end)
    return 1;
  f->start = f->end = 0;
  if (f->kind != KIND_READ)
    return -1;
  sandbox_list_u8_t got;
  if (!host_read(f, BUFFER_SIZE, &got))
    return -1;
  memcpy(f->buffer, got.ptr, got.len);
  f->end = got.len;
  sandbox_list_u8_free(&got);
  return f->end > 0;
}

/* ---- file objects ------------------------------------------------------- */

static mfile *new_file(lua_State *L) {
  mfile *f = lua_newuserdatauv(L, sizeof(mfile) + BUFFER_SIZE, 0);
  memset(f, 0, sizeof(mfile));
  f->kind = KIND_CLOSED; /* until the host has opened it */
  luaL_setmetatable(L, FILE_META);
  return f;
}

static mfile *tofile(lua_State *L) {
  mfile *f = luaL_checkudata(L, 1, FILE_META);
  if (f->kind == KIND_CLOSED)
    luaL_error(L, "attempt to use a closed file");
  return f;
}

/* nil, message, code */
static int push_result(lua_State *L, const char *message, int code) {
  luaL_pushfail(L);
  lua_pushstring(L, message);
  lua_pushinteger(L, code);
  return 3;
}

static int push_failure(lua_State *L, moonwall_sandbox_files_failure_t *failure) {
  luaL_pushfail(L);
  lua_pushlstring(L, (const char *)failure->message.ptr, failure->message.len);
  lua_pushinteger(L, failure->code);
  moonwall_sandbox_files_failure_free(failure);
  return 3;
}

/* Open `path` for reading into a new file object (pushed); on failure the
 * object stays closed and nil, message, code are pushed instead. Returns
 * the number of values pushed. */
static int open_path(lua_State *L, const char *path, size_t len) {
  mfile *f = new_file(L);
  sandbox_list_u8_t list = {(uint8_t *)path, len};
  moonwall_sandbox_files_failure_t failure;
  uint32_t id;
  if (!moonwall_sandbox_files_open(&list, &id, &failure)) {
    if (failure.code != CODE_EMFILE)
      return push_failure(L, &failure);
    /* Too many open files: unreachable ones may still await collection. */
    moonwall_sandbox_files_failure_free(&failure);
    lua_gc(L, LUA_GCCOLLECT);
    if (!moonwall_sandbox_files_open(&list, &id, &failure))
      return push_failure(L, &failure);
  }
  f->id = id;
  f->kind = KIND_READ;
  return 1;
}

/* ---- reading ------------------------------------------------------------ */

static int read_line(lua_State *L, mfile *f, int chop) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  int any = 0;
  for (;;) {
    if (fill(f) <= 0)
      break;
    const unsigned char *p = f->buffer + f->start;
    size_t n = f->end - f->start;
    const unsigned char *newline = memchr(p, '\n', n);
    size_t take = newline != NULL ? (size_t)(newline - p) + 1 : n;
    luaL_addlstring(&b, (const char *)p, newline != NULL && chop ? take - 1 : take);
    f->start += take;
    any = 1;
    if (newline != NULL)
      break;
  }
  luaL_pushresult(&b);
  return any;
}

static void read_all(lua_State *L, mfile *f) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)f->buffer + f->start, f->end - f->start);
  f->start = f->end = 0;
  for (;;) {
    sandbox_list_u8_t got;
    if (!host_read(f, HOST_READ_MAX, &got))
      break;
    size_t n = got.len;
    luaL_addlstring(&b, (const char *)got.ptr, n);
    sandbox_list_u8_free(&got);
    if (n == 0)
      break;
  }
  luaL_pushresult(&b);
}

static int read_chars(lua_State *L, mfile *f, size_t want) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t read = 0;
  while (want > 0) {
    if (f->start < f->end) {
      size_t take = f->end - f->start < want ? f->end - f->start : want;
      luaL_addlstring(&b, (const char *)f->buffer + f->start, take);
      f->start += take;
      want -= take;
      read += take;
    } else if (want >= BUFFER_SIZE) {
      sandbox_list_u8_t got;
      if (!host_read(f, want < HOST_READ_MAX ? want : HOST_READ_MAX, &got))
        break;
      size_t n = got.len;
      luaL_addlstring(&b, (const char *)got.ptr, n);
      sandbox_list_u8_free(&got);
      if (n == 0)
        break;
      want -= n;
      read += n;
    } else if (fill(f) <= 0) {
      break;
    }
  }
  luaL_pushresult(&b);
  return read > 0;
}

static int test_eof(lua_State *L, mfile *f) {
  int more = fill(f) > 0;
  lua_pushliteral(L, "");
  return more;
}

/* "n": a numeral, read as Lua's own io library reads one: optional spaces
 * and sign, decimal or hexadecimal digits with a point and an exponent, at
 * most MAX_NUMERAL characters, then converted as Lua converts strings. */
typedef struct {
  mfile *f;
  int c;  /* the character looked at */
  int n;  /* characters kept */
  char kept[MAX_NUMERAL + 1];
} numeral;

static int next_char(mfile *f) {
  if (fill(f) <= 0)
    return EOF;
  return f->buffer[f->start++];
}

/* Keep the current character and look at the next one; 0 (and an invalid
 * numeral) when it would be too long. */
static int keep_char(numeral *r) {
  if (r->n >= MAX_NUMERAL) {
    r->kept[0] = '\0';
    return 0;
  }
  r->kept[r->n++] = (char)r->c;
  r->c = next_char(r->f);
  return 1;
}

static int keep_either(numeral *r, char a, char b) {
  if (r->c == a || r->c == b)
    return keep_char(r);
  return 0;
}

static int keep_digits(numeral *r, int hex) {
  int count = 0;
  while (r->c != EOF && (hex ? isxdigit(r->c) : isdigit(r->c)) && keep_char(r))
    count++;
  return count;
}

static int read_number(lua_State *L, mfile *f) {
  numeral r;
  r.f = f;
  r.n = 0;
  int digits = 0, hex = 0;
  do {
    r.c = next_char(f);
  } while (r.c != EOF && isspace(r.c));
  keep_either(&r, '-', '+');
  if (keep_either(&r, '0', '0')) {
    if (keep_either(&r, 'x', 'X'))
      hex = 1;
    else
      digits = 1;
  }
  digits += keep_digits(&r, hex);
  if (keep_either(&r, '.', '.'))
    digits += keep_digits(&r, hex);
  if (digits > 0 && keep_either(&r, hex ? 'p' : 'e', hex ? 'P' : 'E')) {
    keep_either(&r, '-', '+');
    keep_digits(&r, 0);
  }
  if (r.c != EOF)
    f->start--; /* the character looked at stays unread (it is buffered) */
  r.kept[r.n] = '\0';
  if (lua_stringtonumber(L, r.kept) != 0)
    return 1;
  luaL_pushfail(L);
  return 0;
}

/* Read with the formats at `first` and after; Lua's results. */
static int read_formats(lua_State *L, mfile *f, int first) {
  int nargs = lua_gettop(L) - first + 1;
  int n, success;
  f->failed = 0;
  if (nargs <= 0) {
    success = read_line(L, f, 1);
    n = first + 1;
  } else {
    luaL_checkstack(L, nargs + LUA_MINSTACK, "too many arguments");
    success = 1;
    for (n = first; nargs-- > 0 && success; n++) {
      if (lua_type(L, n) == LUA_TNUMBER) {
        size_t count = (size_t)luaL_checkinteger(L, n);
        success = count == 0 ? test_eof(L, f) : read_chars(L, f, count);
      } else {
        const char *p = luaL_checkstring(L, n);
        if (*p == '*')
          p++;
        switch (*p) {
        case 'n':
          success = read_number(L, f);
          break;
        case 'l':
          success = read_line(L, f, 1);
          break;
        case 'L':
          success = read_line(L, f, 0);
          break;
        case 'a':
          read_all(L, f);
          success = 1;
          break;
        default:
          return luaL_argerror(L, n, "invalid format");
        }
      }
    }
  }
  if (f->failed) {
    f->failed = 0;
    return push_result(L, f->error, f->error_code);
  }
  if (!success) {
    lua_pop(L, 1);
    luaL_pushfail(L);
  }
  return n - first;
}

static int f_read(lua_State *L) { return read_formats(L, tofile(L), 2); }

/* The iterator of lines(): upvalues file, format count, close-at-end,
 * formats. */
static int lines_next(lua_State *L) {
  mfile *f = lua_touserdata(L, lua_upvalueindex(1));
  int n = (int)lua_tointeger(L, lua_upvalueindex(2));
  if (f->kind == KIND_CLOSED)
    return luaL_error(L, "file is already closed");
  lua_settop(L, 1);
  luaL_checkstack(L, n, "too many arguments");
  for (int i = 1; i <= n; i++)
    lua_pushvalue(L, lua_upvalueindex(3 + i));
  n = read_formats(L, f, 2);
  if (lua_toboolean(L, -n))
    return n;
  if (n > 1) /* nil, message, code: a read that failed */
    return luaL_error(L, "%s", lua_tostring(L, -n + 1));
  if (lua_toboolean(L, lua_upvalueindex(3)))
    host_close(f);
  return 0;
}

/* The file at 1 and formats after it -> the iterator. */
static void push_lines(lua_State *L, int close_at_end) {
  int n = lua_gettop(L) - 1;
  luaL_argcheck(L, n <= 250, 252, "too many arguments");
  lua_pushvalue(L, 1);
  lua_pushinteger(L, n);
  lua_pushboolean(L, close_at_end);
  lua_rotate(L, 2, 3);
  lua_pushcclosure(L, lines_next, 3 + n);
}

static int f_lines(lua_State *L) {
  tofile(L);
  push_lines(L, 0);
  return 1;
}

static int f_seek(lua_State *L) {
  static const char *const whences[] = {"set", "cur", "end", NULL};
  static const moonwall_sandbox_files_whence_t codes[] = {
      MOONWALL_SANDBOX_FILES_WHENCE_SET, MOONWALL_SANDBOX_FILES_WHENCE_CUR,
      MOONWALL_SANDBOX_FILES_WHENCE_END};
  mfile *f = tofile(L);
  int whence = luaL_checkoption(L, 2, "cur", whences);
  lua_Integer offset = luaL_optinteger(L, 3, 0);
  if (whence == 1) {
    /* The host is ahead by what is buffered. */
    lua_Integer buffered = (lua_Integer)(f->end - f->start);
    if (offset < LUA_MININTEGER + buffered)
      return push_result(L, "Invalid argument", CODE_EINVAL);
    offset -= buffered;
  }
  uint64_t position;
  moonwall_sandbox_files_failure_t failure;
  if (!moonwall_sandbox_files_seek(f->id, codes[whence], (int64_t)offset, &position, &failure))
    return push_failure(L, &failure);
  f->start = f->end = 0;
  lua_pushinteger(L, position > (uint64_t)LUA_MAXINTEGER ? LUA_MAXINTEGER : (lua_Integer)position);
  return 1;
}

static int f_close(lua_State *L) {
  host_close(tofile(L));
  lua_pushboolean(L, 1);
  return 1;
}

static int f_gc(lua_State *L) {
  mfile *f = luaL_checkudata(L, 1, FILE_META);
  if (f->kind == KIND_READ)
    host_close(f);
  return 0;
}

static int f_tostring(lua_State *L) {
  mfile *f = luaL_checkudata(L, 1, FILE_META);
  if (f->kind == KIND_CLOSED)
    lua_pushliteral(L, "file (closed)");
  else
    lua_pushfstring(L, "file (%p)", (void *)f);
  return 1;
}

/* ---- writing: the run's output only -------------------------------------- */

/* Push io.stdout. */
static void push_stdout(lua_State *L) { lua_getfield(L, LUA_REGISTRYINDEX, STDOUT_KEY); }

static int is_stdout(lua_State *L, int index) {
  push_stdout(L);
  int same = lua_rawequal(L, index, -1);
  lua_pop(L, 1);
  return same;
}

/* Check that argument 1 is io.stdout (its methods' self). */
static void check_stdout(lua_State *L) {
  if (!is_stdout(L, 1))
    luaL_typeerror(L, 1, FILE_META);
}

/* The values from `arg` on, concatenated as io.write writes them. */
static void push_values(lua_State *L, int arg) {
  int top = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = arg; i <= top; i++) {
    if (lua_type(L, i) == LUA_TNUMBER) {
      char number[64];
      int len = lua_isinteger(L, i)
                    ? snprintf(number, sizeof(number), LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, i))
                    : snprintf(number, sizeof(number), LUA_NUMBER_FMT, (LUAI_UACNUMBER)lua_tonumber(L, i));
      luaL_addlstring(&b, number, len > 0 ? (size_t)len : 0);
    } else {
      size_t len;
      const char *s = luaL_checklstring(L, i, &len);
      luaL_addlstring(&b, s, len);
    }
  }
  luaL_pushresult(&b);
}

/* Write the values from 2 on to the run's output (one host write); return
 * io.stdout. */
static int write_stdout(lua_State *L) {
  push_values(L, 2);
  size_t len;
  const char *bytes = lua_tolstring(L, -1, &len);
  moonwall_write_stdout(bytes, len);
  push_stdout(L);
  return 1;
}

/* file:write(...): files are read-only, as a C FILE* opened "r" is. */
static int f_write(lua_State *L) {
  tofile(L);
  push_values(L, 2);
  return push_result(L, "Bad file descriptor", CODE_EBADF);
}

static int io_write(lua_State *L) {
  push_stdout(L);
  lua_insert(L, 1);
  return write_stdout(L);
}

static int f_flush(lua_State *L) {
  tofile(L);
  lua_pushboolean(L, 1);
  return 1;
}

/* setvbuf(mode [, size]) after the receiver was checked: the arguments are
 * checked as Lua's, and nothing is buffered differently. */
static int checked_setvbuf(lua_State *L) {
  static const char *const modes[] = {"no", "full", "line", NULL};
  luaL_checkoption(L, 2, NULL, modes);
  luaL_optinteger(L, 3, 0);
  lua_pushboolean(L, 1);
  return 1;
}

static int f_setvbuf(lua_State *L) {
  tofile(L);
  return checked_setvbuf(L);
}

/* io.stdout's methods. */
static int out_write(lua_State *L) {
  check_stdout(L);
  return write_stdout(L);
}

static int out_close(lua_State *L) {
  check_stdout(L);
  luaL_pushfail(L);
  lua_pushliteral(L, "cannot close standard file");
  return 2;
}

static int out_flush(lua_State *L) {
  check_stdout(L);
  lua_pushboolean(L, 1);
  return 1;
}

static int out_setvbuf(lua_State *L) {
  check_stdout(L);
  return checked_setvbuf(L);
}

static int out_read(lua_State *L) {
  check_stdout(L);
  return push_result(L, "Bad file descriptor", CODE_EBADF);
}

static int out_lines(lua_State *L) {
  check_stdout(L);
  return luaL_error(L, "io.stdout is write-only");
}

static int out_seek(lua_State *L) {
  check_stdout(L);
  return push_result(L, "Illegal seek", CODE_ESPIPE);
}

/* ---- the io table -------------------------------------------------------- */

static int io_open(lua_State *L) {
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  const char *mode = luaL_optstring(L, 2, "r");
  /* Lua's modes: r, w or a, then an optional '+', then only 'b's. */
  const char *m = mode;
  int valid = *m != '\0' && strchr("rwa", *m) != NULL;
  int plus = 0;
  if (valid) {
    m++;
    if (*m == '+') {
      plus = 1;
      m++;
    }
    valid = strspn(m, "b") == strlen(m);
  }
  luaL_argcheck(L, valid, 2, "invalid mode");
  if (mode[0] != 'r' || plus) {
    luaL_pushfail(L);
    lua_pushfstring(L, "io.open: files are read-only in moonwall (mode \"%s\")", mode);
    lua_pushinteger(L, CODE_EROFS);
    return 3;
  }
  return open_path(L, path, len);
}

static int io_lines(lua_State *L) {
  if (lua_isnone(L, 1))
    return luaL_error(L, "io.lines: moonwall has no standard input (give a file name)");
  size_t len;
  const char *path = luaL_checklstring(L, 1, &len);
  if (open_path(L, path, len) != 1)
    return luaL_error(L, "%s", lua_tostring(L, -2));
  lua_replace(L, 1);
  push_lines(L, 1);
  lua_pushnil(L);
  lua_pushnil(L);
  lua_pushvalue(L, 1); /* the file, to be closed by a generic for */
  return 4;
}

static int io_close(lua_State *L) {
  if (lua_isnone(L, 1) || is_stdout(L, 1)) {
    luaL_pushfail(L);
    lua_pushliteral(L, "cannot close standard file");
    return 2;
  }
  return f_close(L);
}

static int io_type(lua_State *L) {
  luaL_checkany(L, 1);
  mfile *f = luaL_testudata(L, 1, FILE_META);
  if (is_stdout(L, 1))
    lua_pushliteral(L, "file");
  else if (f == NULL)
    luaL_pushfail(L);
  else if (f->kind == KIND_CLOSED)
    lua_pushliteral(L, "closed file");
  else
    lua_pushliteral(L, "file");
  return 1;
}

/* ---- os.getenv ------------------------------------------------------------ */

static int os_getenv(lua_State *L) {
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  sandbox_list_u8_t list = {(uint8_t *)name, len};
  sandbox_option_list_u8_t value;
  sandbox_string_t err;
  if (!moonwall_sandbox_env_get(&list, &value, &err)) {
    luaL_pushfail(L);
    lua_pushlstring(L, (const char *)err.ptr, err.len);
    sandbox_string_free(&err);
    return 2;
  }
  if (!value.is_some) {
    luaL_pushfail(L);
    return 1;
  }
  lua_pushlstring(L, (const char *)value.val.ptr, value.val.len);
  sandbox_list_u8_free(&value.val);
  return 1;
}

/* ---- require's lib_dirs searcher ------------------------------------------ */

int moonwall_find_lib_module(lua_State *L, const char *name) {
  size_t len = strlen(name);
  /* require's own argument: a name with a zero byte is no module name. */
  size_t full_len;
  if (lua_type(L, 1) == LUA_TSTRING && lua_tolstring(L, 1, &full_len) == name && full_len != len) {
    lua_pushliteral(L, "a module name cannot contain a zero byte");
    return 0;
  }
  sandbox_list_u8_t list = {(uint8_t *)name, len};
  moonwall_sandbox_files_module_t module;
  moonwall_sandbox_files_module_error_t err;
  if (!moonwall_sandbox_files_find_module(&list, &module, &err)) {
    int refused = err.tag != MOONWALL_SANDBOX_FILES_MODULE_ERROR_NOT_FOUND;
    sandbox_string_t *text = refused ? &err.val.refused : &err.val.not_found;
    lua_pushlstring(L, (const char *)text->ptr, text->len);
    moonwall_sandbox_files_module_error_free(&err);
    if (refused)
      return lua_error(L);
    return 0;
  }
  lua_pushliteral(L, "@");
  lua_pushlstring(L, (const char *)module.file.ptr, module.file.len);
  lua_concat(L, 2);
  const char *chunk_name = lua_tostring(L, -1);
  /* Binary only when the host says it compiled the module (wit/files.wit). */
  const char *mode = module.binary ? "b" : "t";
  int status = luaL_loadbufferx(L, (const char *)module.source.ptr, module.source.len, chunk_name, mode);
  moonwall_sandbox_files_module_free(&module);
  if (status != LUA_OK)
    return luaL_error(L, "error loading module '%s' from file '%s':\n\t%s", name, chunk_name + 1,
                      lua_tostring(L, -1));
  lua_pushstring(L, chunk_name + 1); /* the loader's second argument */
  lua_remove(L, -3);
  return 1;
}

/* ---- opening ---------------------------------------------------------------- */

void moonwall_open_io(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"read", f_read},   {"lines", f_lines},   {"seek", f_seek},       {"close", f_close},
      {"write", f_write}, {"flush", f_flush},   {"setvbuf", f_setvbuf}, {NULL, NULL},
  };
  static const luaL_Reg meta[] = {
      {"__gc", f_gc}, {"__close", f_gc}, {"__tostring", f_tostring}, {NULL, NULL},
  };
  static const luaL_Reg functions[] = {
      {"open", io_open}, {"lines", io_lines}, {"close", io_close},
      {"type", io_type}, {"write", io_write}, {NULL, NULL},
  };
  static const luaL_Reg stdout_methods[] = {
      {"write", out_write}, {"close", out_close}, {"flush", out_flush}, {"setvbuf", out_setvbuf},
      {"read", out_read},   {"lines", out_lines}, {"seek", out_seek},   {NULL, NULL},
  };
  luaL_newmetatable(L, FILE_META);
  luaL_setfuncs(L, meta, 0);
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);

  luaL_newlib(L, functions);
  luaL_newlib(L, stdout_methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, LUA_REGISTRYINDEX, STDOUT_KEY);
  lua_setfield(L, -2, "stdout");

  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_LOADED_TABLE);
  lua_pushvalue(L, -2);
  lua_setfield(L, -2, "io");
  lua_pop(L, 1);
  lua_setglobal(L, "io");

  if (lua_getglobal(L, "os") == LUA_TTABLE) {
    lua_pushcfunction(L, os_getenv);
    lua_setfield(L, -2, "getenv");
  }
  lua_pop(L, 1);
}
