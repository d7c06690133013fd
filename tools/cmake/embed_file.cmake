# Writes OUTPUT, a C file defining `const unsigned char NAME[]` with the bytes
# of INPUT plus a terminating 0, and `const size_t NAME_len` (without the 0).
#   cmake -DINPUT=file -DOUTPUT=file.c -DNAME=symbol -P embed_file.cmake
file(READ "${INPUT}" hex HEX)
string(LENGTH "${hex}" n_hex)
math(EXPR n_bytes "${n_hex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
string(REGEX REPLACE "(0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,0x..,)" "\\1\n" bytes "${bytes}")
file(WRITE "${OUTPUT}" "/* Generated from ${INPUT} by tools/cmake/embed_file.cmake. */\n"
  "#include <stddef.h>\n"
  "const unsigned char ${NAME}[] = {\n${bytes}0x00};\n"
  "const size_t ${NAME}_len = ${n_bytes};\n")
