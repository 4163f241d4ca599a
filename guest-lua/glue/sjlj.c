/*
 * The runtime behind setjmp/longjmp on wasm exceptions, following the
 * WebAssembly tool-conventions document SetjmpLongjmp.md.
 *
 * LLVM rewrites each function that calls setjmp: setjmp becomes
 * __wasm_setjmp(env, label, id), where `id` identifies this invocation of the
 * function and `label` the call site; every call that may longjmp is wrapped in
 * a handler for the __c_longjmp tag which asks __wasm_setjmp_test whether the
 * buffer belongs to this invocation (then it resumes at `label`) or rethrows.
 * longjmp throws __c_longjmp carrying a pointer to {env, val}.
 *
 * A corrupted buffer traps rather than jumping somewhere unknown.
 */
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

void __wasm_setjmp(void *env, uint32_t label, void *func_invocation_id) {
  struct moonwall_jmp_buf *jb = env;
  if (label == 0 || func_invocation_id == NULL)
    __builtin_trap();
  jb->func_invocation_id = func_invocation_id;
  jb->label = label;
}

uint32_t __wasm_setjmp_test(void *env, void *func_invocation_id) {
  struct moonwall_jmp_buf *jb = env;
  if (jb->label == 0 || func_invocation_id == NULL)
    __builtin_trap();
  return jb->func_invocation_id == func_invocation_id ? jb->label : 0;
}

void __wasm_longjmp(void *env, int val) {
  struct moonwall_jmp_buf *jb = env;
  jb->arg.env = env;
  jb->arg.val = val == 0 ? 1 : val;
  /* Tag index 1 is __c_longjmp (0 is C++'s __cpp_exception). */
  __builtin_wasm_throw(1, &jb->arg);
}
