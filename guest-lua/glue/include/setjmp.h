/*
 * setjmp/longjmp for the guest. Debian's wasi-libc ships no <setjmp.h>;
 * clang's `-mllvm -wasm-enable-sjlj` lowers calls to these two functions onto
 * wasm exceptions, using the runtime in sjlj.c. The buffer layout is the one
 * that runtime expects (WebAssembly tool-conventions, SetjmpLongjmp.md).
 */
#ifndef MOONWALL_SETJMP_H
#define MOONWALL_SETJMP_H

#include <stdint.h>

struct moonwall_jmp_buf {
  void *func_invocation_id;
  uint32_t label;
  struct {
    void *env;
    int val;
  } arg;
};

typedef struct moonwall_jmp_buf jmp_buf[1];

int setjmp(jmp_buf env) __attribute__((returns_twice));
_Noreturn void longjmp(jmp_buf env, int val);

#endif
