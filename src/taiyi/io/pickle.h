// A restricted unpickler for the pickles torch.save writes (data.pkl of a
// PyTorch zip checkpoint). It builds a small value tree and never executes
// anything.
//
// Follows CPython's Lib/pickle.py and Lib/pickletools.py (protocols 2-5), but
// understands only the opcodes torch.save emits for a state dict: PROTO, FRAME,
// EMPTY_DICT/LIST/TUPLE, MARK, TUPLE/TUPLE1/2/3, (SHORT_)BINUNICODE,
// BINUNICODE8, (SHORT_)BINSTRING, (SHORT_)BINBYTES, BININT/BININT1/BININT2,
// LONG1, BINFLOAT, NONE, NEWTRUE/NEWFALSE, GLOBAL, STACK_GLOBAL, REDUCE, BUILD,
// BINPERSID, SETITEM(S), APPEND(S), (LONG_)BINPUT, (LONG_)BINGET, MEMOIZE,
// STOP. Any other opcode is an Error naming it and its byte offset.
//
// Only these globals may be named (anything else, e.g. os.system, is refused
// when it is named, before it could be called):
//   collections.OrderedDict          REDUCE with () makes an empty Dict
//   torch._utils._rebuild_tensor_v2  REDUCE makes a Call (args kept, see torch_checkpoint.cpp)
//   torch._utils._rebuild_parameter  REDUCE makes a Call wrapping a tensor Call
//   torch.{Float,Half,BFloat16,Long,Int,Byte}Storage  only as values (persistent ids)
// BINPERSID wraps its id in a PersistentId value; resolving it is the caller's job.
//
// Hostile structure is an Error too: stack underflow (including popping past a
// MARK), undefined memo indices, lengths past the end of the data, nesting
// deeper than kMaxDepth, and any modification of a container after it was put
// inside another one (torch never does that; refusing it rules out cycles).
//
//   pickle::ValuePtr root = pickle::unpickle(bytes, "model.bin");
//   if (root->kind == pickle::Kind::Dict) for (auto& [k, v] : root->entries) ...
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace taiyi::io::pickle {

enum class Kind : uint8_t { None, Bool, Int, Float, String, Bytes, Tuple, List, Dict, Global, Call, PersistentId };
const char* kind_name(Kind k);  // "None", "bool", "int", ... for messages

// Deepest nesting of containers accepted; torch state dicts need fewer than 10.
constexpr int kMaxDepth = 200;

struct Value;
using ValuePtr = std::shared_ptr<Value>;

struct Value {
  Kind kind = Kind::None;
  bool boolean = false;
  int64_t integer = 0;
  double real = 0;
  std::string text;                                    // String, Bytes; Global: "module.name"
  std::vector<ValuePtr> items;                         // Tuple, List; Call: arguments; PersistentId: {id}
  std::vector<std::pair<ValuePtr, ValuePtr>> entries;  // Dict, in insertion order (a repeated key appears twice)
  ValuePtr callee;                                     // Call: the Global that was called
  ValuePtr state;                                      // Dict or Call: the BUILD state, if any (unused)
  // Bookkeeping for the structure checks.
  bool frozen = false;  // inside another container: no longer modifiable
  int depth = 0;        // 0 for scalars, 1 + deepest child for containers

  bool is_string(std::string_view s) const { return kind == Kind::String && text == s; }
  bool is_global(std::string_view s) const { return kind == Kind::Global && text == s; }
};

// Unpickles `data`. `where` (the file path) starts every error message.
ValuePtr unpickle(std::span<const std::byte> data, const std::string& where);

}  // namespace taiyi::io::pickle
