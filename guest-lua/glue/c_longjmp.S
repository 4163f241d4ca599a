# The exception tag longjmp throws and the setjmp handlers catch. Its payload
# is one i32: the address of the {env, val} pair in the jmp_buf.
.globl __c_longjmp
.tagtype __c_longjmp i32
__c_longjmp:
