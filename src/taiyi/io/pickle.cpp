// Restricted unpickler for torch.save's data.pkl; opcodes per CPython's
// Lib/pickletools.py. See pickle.h for what is accepted and why.
#include "taiyi/io/pickle.h"

#include <array>
#include <bit>
#include <cstring>
#include <unordered_map>

#include "taiyi/tensor/tensor.h"

namespace taiyi::io::pickle {

const char* kind_name(Kind k) {
  switch (k) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::Bytes: return "bytes";
    case Kind::Tuple: return "tuple";
    case Kind::List: return "list";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Call: return "object";
    case Kind::PersistentId: return "persistent id";
  }
  return "?";
}

namespace {

// The only globals a PyTorch state dict needs.
constexpr std::array<std::string_view, 9> kAllowedGlobals = {"collections.OrderedDict",
                                                             "torch._utils._rebuild_tensor_v2",
                                                             "torch._utils._rebuild_parameter",
                                                             "torch.FloatStorage",
                                                             "torch.HalfStorage",
                                                             "torch.BFloat16Storage",
                                                             "torch.LongStorage",
                                                             "torch.IntStorage",
                                                             "torch.ByteStorage"};

// Names of every standard opcode, so that a refusal says what the file tried to do.
const char* opcode_name(uint8_t op) {
  switch (op) {
    case '(': return "MARK";
    case '.': return "STOP";
    case '0': return "POP";
    case '1': return "POP_MARK";
    case '2': return "DUP";
    case 'F': return "FLOAT";
    case 'I': return "INT";
    case 'J': return "BININT";
    case 'K': return "BININT1";
    case 'L': return "LONG";
    case 'M': return "BININT2";
    case 'N': return "NONE";
    case 'P': return "PERSID";
    case 'Q': return "BINPERSID";
    case 'R': return "REDUCE";
    case 'S': return "STRING";
    case 'T': return "BINSTRING";
    case 'U': return "SHORT_BINSTRING";
    case 'V': return "UNICODE";
    case 'X': return "BINUNICODE";
    case 'a': return "APPEND";
    case 'b': return "BUILD";
    case 'c': return "GLOBAL";
    case 'd': return "DICT";
    case '}': return "EMPTY_DICT";
    case 'e': return "APPENDS";
    case 'g': return "GET";
    case 'h': return "BINGET";
    case 'i': return "INST";
    case 'j': return "LONG_BINGET";
    case 'l': return "LIST";
    case ']': return "EMPTY_LIST";
    case 'o': return "OBJ";
    case 'p': return "PUT";
    case 'q': return "BINPUT";
    case 'r': return "LONG_BINPUT";
    case 's': return "SETITEM";
    case 't': return "TUPLE";
    case ')': return "EMPTY_TUPLE";
    case 'u': return "SETITEMS";
    case 'G': return "BINFLOAT";
    case 0x80: return "PROTO";
    case 0x81: return "NEWOBJ";
    case 0x82: return "EXT1";
    case 0x83: return "EXT2";
    case 0x84: return "EXT4";
    case 0x85: return "TUPLE1";
    case 0x86: return "TUPLE2";
    case 0x87: return "TUPLE3";
    case 0x88: return "NEWTRUE";
    case 0x89: return "NEWFALSE";
    case 0x8a: return "LONG1";
    case 0x8b: return "LONG4";
    case 'B': return "BINBYTES";
    case 'C': return "SHORT_BINBYTES";
    case 0x8c: return "SHORT_BINUNICODE";
    case 0x8d: return "BINUNICODE8";
    case 0x8e: return "BINBYTES8";
    case 0x8f: return "EMPTY_SET";
    case 0x90: return "ADDITEMS";
    case 0x91: return "FROZENSET";
    case 0x92: return "NEWOBJ_EX";
    case 0x93: return "STACK_GLOBAL";
    case 0x94: return "MEMOIZE";
    case 0x95: return "FRAME";
    case 0x96: return "BYTEARRAY8";
    case 0x97: return "NEXT_BUFFER";
    case 0x98: return "READONLY_BUFFER";
  }
  return nullptr;
}

// Text from the file, made safe to print: non-printable bytes escaped, long strings cut.
std::string printable(std::string_view s) {
  std::string r;
  for (size_t i = 0; i < s.size() && i < 200; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c < 0x7f) {
      r += static_cast<char>(c);
    } else {
      static const char* hex = "0123456789abcdef";
      r += "\\x";
      r += hex[c >> 4];
      r += hex[c & 15];
    }
  }
  if (s.size() > 200) r += "...";
  return r;
}

class Unpickler {
 public:
  Unpickler(std::span<const std::byte> data, const std::string& where) : data_(data), where_(where) {}

  ValuePtr run() {
    while (pos_ < data_.size()) {
      op_pos_ = pos_;
      const uint8_t op = u8();
      if (op == '.') return pop();
      step(op);
    }
    throw Error(where_ + ": pickle data ends without a STOP opcode (truncated?)");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw Error(where_ + ": pickle: " + what + " at byte " + std::to_string(op_pos_));
  }

  // ---- reading ----
  const std::byte* take(uint64_t n, const char* what) {
    if (n > data_.size() - pos_)
      fail(std::string(what) + " of " + std::to_string(n) + " bytes runs past the end of the data (" +
           std::to_string(data_.size() - pos_) + " left)");
    const std::byte* p = data_.data() + pos_;
    pos_ += static_cast<size_t>(n);
    return p;
  }
  uint64_t le(int n, const char* what) {
    const std::byte* p = take(static_cast<uint64_t>(n), what);
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; --i) v = v << 8 | static_cast<uint8_t>(p[i]);
    return v;
  }
  uint8_t u8() { return static_cast<uint8_t>(le(1, "opcode argument")); }
  std::string str(uint64_t n, const char* what) {
    const std::byte* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(n));
  }
  // GLOBAL's arguments are newline-terminated; real module paths are short.
  std::string line() {
    constexpr size_t kMaxLine = 1024;
    for (size_t i = pos_; i < data_.size() && i - pos_ < kMaxLine; ++i) {
      if (data_[i] == std::byte{'\n'}) {
        std::string s(reinterpret_cast<const char*>(data_.data() + pos_), i - pos_);
        pos_ = i + 1;
        return s;
      }
    }
    fail("GLOBAL argument is not a newline-terminated name");
  }

  // ---- values ----
  static ValuePtr make(Kind k) {
    auto v = std::make_shared<Value>();
    v->kind = k;
    return v;
  }
  // Every edge of the tree goes through here: the child becomes immutable, so
  // no cycle can form, and depth stays exact (a frozen child never grows).
  void adopt(Value& parent, const ValuePtr& child) {
    child->frozen = true;
    if (parent.frozen)
      fail(std::string("modifies a ") + kind_name(parent.kind) +
           " after it was put inside another object (self-referencing structures are not supported)");
    parent.depth = std::max(parent.depth, child->depth + 1);
    if (parent.depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth) + " levels");
  }

  // ---- stack ----
  size_t mark_base() const { return marks_.empty() ? 0 : marks_.back(); }
  ValuePtr pop() {
    if (stack_.size() <= mark_base()) fail("stack underflow");
    ValuePtr v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const ValuePtr& top() {
    if (stack_.size() <= mark_base()) fail("stack underflow");
    return stack_.back();
  }
  std::vector<ValuePtr> pop_mark() {
    if (marks_.empty()) fail("no MARK to pop to (stack underflow)");
    const size_t base = marks_.back();
    marks_.pop_back();
    std::vector<ValuePtr> items(std::make_move_iterator(stack_.begin() + static_cast<std::ptrdiff_t>(base)),
                                std::make_move_iterator(stack_.end()));
    stack_.resize(base);
    return items;
  }
  void push(ValuePtr v) { stack_.push_back(std::move(v)); }
  void push_int(int64_t i) {
    auto v = make(Kind::Int);
    v->integer = i;
    push(std::move(v));
  }
  void push_text(Kind k, std::string s) {
    auto v = make(k);
    v->text = std::move(s);
    push(std::move(v));
  }
  void push_tuple(std::vector<ValuePtr> items) {
    auto t = make(Kind::Tuple);
    for (const auto& it : items) adopt(*t, it);
    t->items = std::move(items);
    push(std::move(t));
  }
  void set_item(Value& dict, ValuePtr key, ValuePtr value) {
    if (dict.kind != Kind::Dict) fail(std::string("SETITEM on a ") + kind_name(dict.kind) + ", not a dict");
    adopt(dict, key);
    adopt(dict, value);
    dict.entries.emplace_back(std::move(key), std::move(value));
  }
  void append(Value& list, ValuePtr value) {
    if (list.kind != Kind::List) fail(std::string("APPEND to a ") + kind_name(list.kind) + ", not a list");
    adopt(list, value);
    list.items.push_back(std::move(value));
  }
  void memo_get(uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail("memo index " + std::to_string(index) + " is not defined (out of range)");
    push(it->second);
  }

  void push_global(const std::string& module, const std::string& name) {
    const std::string full = module + "." + name;
    bool allowed = false;
    for (std::string_view g : kAllowedGlobals) allowed = allowed || g == full;
    if (!allowed)
      throw Error(where_ + ": refusing to load global '" + printable(full) + "' from the pickle at byte " +
                  std::to_string(op_pos_) + " (only PyTorch state dicts are supported)");
    push_text(Kind::Global, full);
  }

  void reduce() {
    ValuePtr args = pop();
    ValuePtr callee = pop();
    if (callee->kind != Kind::Global) fail(std::string("REDUCE calls a ") + kind_name(callee->kind));
    if (args->kind != Kind::Tuple) fail(std::string("REDUCE arguments are a ") + kind_name(args->kind));
    if (callee->text == "collections.OrderedDict") {
      if (!args->items.empty()) fail("collections.OrderedDict called with arguments is not supported");
      push(make(Kind::Dict));
    } else if (callee->text == "torch._utils._rebuild_tensor_v2" || callee->text == "torch._utils._rebuild_parameter") {
      auto call = make(Kind::Call);
      adopt(*call, callee);
      for (const auto& a : args->items) adopt(*call, a);
      call->callee = std::move(callee);
      call->items = args->items;
      push(std::move(call));
    } else {
      fail("global '" + callee->text + "' cannot be called");
    }
  }

  void step(uint8_t op) {
    switch (op) {
      case 0x80: {  // PROTO
        const uint8_t v = u8();
        if (v < 2 || v > 5) fail("unsupported pickle protocol " + std::to_string(v));
        break;
      }
      case 0x95: {  // FRAME: only a buffering hint, but its length must be honest
        const uint64_t n = le(8, "FRAME length");
        if (n > data_.size() - pos_) fail("FRAME of " + std::to_string(n) + " bytes runs past the end of the data");
        break;
      }
      case '}': push(make(Kind::Dict)); break;
      case ']': push(make(Kind::List)); break;
      case ')': push_tuple({}); break;
      case '(': marks_.push_back(stack_.size()); break;
      case 't': push_tuple(pop_mark()); break;
      case 0x85: {
        ValuePtr a = pop();
        push_tuple({std::move(a)});
        break;
      }
      case 0x86: {
        ValuePtr b = pop(), a = pop();
        push_tuple({std::move(a), std::move(b)});
        break;
      }
      case 0x87: {
        ValuePtr c = pop(), b = pop(), a = pop();
        push_tuple({std::move(a), std::move(b), std::move(c)});
        break;
      }
      case 0x8c: push_text(Kind::String, str(u8(), "SHORT_BINUNICODE")); break;
      case 'X': push_text(Kind::String, str(le(4, "BINUNICODE length"), "BINUNICODE")); break;
      case 0x8d: push_text(Kind::String, str(le(8, "BINUNICODE8 length"), "BINUNICODE8")); break;
      case 'U': push_text(Kind::String, str(u8(), "SHORT_BINSTRING")); break;
      case 'T': {
        const auto n = static_cast<int32_t>(le(4, "BINSTRING length"));
        if (n < 0) fail("BINSTRING with negative length");
        push_text(Kind::String, str(static_cast<uint64_t>(n), "BINSTRING"));
        break;
      }
      case 'C': push_text(Kind::Bytes, str(u8(), "SHORT_BINBYTES")); break;
      case 'B': push_text(Kind::Bytes, str(le(4, "BINBYTES length"), "BINBYTES")); break;
      case 'J': push_int(static_cast<int32_t>(le(4, "BININT"))); break;
      case 'K': push_int(u8()); break;
      case 'M': push_int(static_cast<int64_t>(le(2, "BININT2"))); break;
      case 0x8a: {  // LONG1: little-endian two's complement of n bytes
        const uint8_t n = u8();
        if (n > 8) fail("LONG1 integer of " + std::to_string(n) + " bytes does not fit in 64 bits");
        uint64_t v = n ? le(n, "LONG1") : 0;
        if (n > 0 && n < 8 && ((v >> (8 * n - 1)) & 1)) v |= ~uint64_t{0} << (8 * n);  // sign-extend
        push_int(static_cast<int64_t>(v));
        break;
      }
      case 'G': {  // BINFLOAT: big-endian IEEE double
        const std::byte* p = take(8, "BINFLOAT");
        uint64_t bits = 0;
        for (int i = 0; i < 8; ++i) bits = bits << 8 | static_cast<uint8_t>(p[i]);
        auto v = make(Kind::Float);
        v->real = std::bit_cast<double>(bits);
        push(std::move(v));
        break;
      }
      case 'N': push(make(Kind::None)); break;
      case 0x88:
      case 0x89: {
        auto v = make(Kind::Bool);
        v->boolean = op == 0x88;
        push(std::move(v));
        break;
      }
      case 'c': {
        std::string module = line();
        std::string name = line();
        push_global(module, name);
        break;
      }
      case 0x93: {  // STACK_GLOBAL
        ValuePtr name = pop(), module = pop();
        if (module->kind != Kind::String || name->kind != Kind::String) fail("STACK_GLOBAL needs two strings");
        push_global(module->text, name->text);
        break;
      }
      case 'R': reduce(); break;
      case 'b': {  // BUILD: setstate; torch uses it for an OrderedDict's _metadata, which we keep but ignore
        ValuePtr state = pop();
        const ValuePtr& target = top();
        if (target->kind != Kind::Dict && target->kind != Kind::Call)
          fail(std::string("BUILD on a ") + kind_name(target->kind));
        adopt(*target, state);
        target->state = std::move(state);
        break;
      }
      case 'Q': {
        ValuePtr id = pop();
        auto v = make(Kind::PersistentId);
        adopt(*v, id);
        v->items.push_back(std::move(id));
        push(std::move(v));
        break;
      }
      case 's': {
        ValuePtr value = pop(), key = pop();
        set_item(*top(), std::move(key), std::move(value));
        break;
      }
      case 'u': {
        std::vector<ValuePtr> kv = pop_mark();
        if (kv.size() % 2) fail("SETITEMS with an odd number of items");
        const ValuePtr& dict = top();
        for (size_t i = 0; i < kv.size(); i += 2) set_item(*dict, std::move(kv[i]), std::move(kv[i + 1]));
        break;
      }
      case 'a': {
        ValuePtr value = pop();
        append(*top(), std::move(value));
        break;
      }
      case 'e': {
        std::vector<ValuePtr> values = pop_mark();
        const ValuePtr& list = top();
        for (auto& v : values) append(*list, std::move(v));
        break;
      }
      case 'q': memo_[u8()] = top(); break;
      case 'r': memo_[le(4, "LONG_BINPUT index")] = top(); break;
      case 0x94: memo_[memo_.size()] = top(); break;
      case 'h': memo_get(u8()); break;
      case 'j': memo_get(le(4, "LONG_BINGET index")); break;
      default: {
        static const char* hex = "0123456789abcdef";
        std::string code = std::string("0x") + hex[op >> 4] + hex[op & 15];
        const char* name = opcode_name(op);
        fail("unsupported opcode " + code + (name ? std::string(" (") + name + ")" : std::string(" (unknown)")));
      }
    }
  }

  std::span<const std::byte> data_;
  const std::string& where_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::vector<ValuePtr> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, ValuePtr> memo_;
};

}  // namespace

ValuePtr unpickle(std::span<const std::byte> data, const std::string& where) { return Unpickler(data, where).run(); }

}  // namespace taiyi::io::pickle
