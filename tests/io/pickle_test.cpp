// The restricted unpickler on hand-assembled byte strings: every supported
// opcode builds the right value, every refusal names its cause and offset.
#include "taiyi/io/pickle.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

#include "io/io_test_util.h"

namespace taiyi::io::pickle {
namespace {

using namespace std::string_literals;
using test::contains_all;
using test::error_of;

ValuePtr load(const std::string& bytes) {
  return unpickle({reinterpret_cast<const std::byte*>(bytes.data()), bytes.size()}, "test.pkl");
}

TEST(Pickle, ScalarsAndStrings) {
  // MARK, then one value per opcode, TUPLE, STOP.
  const std::string p = "\x80\x02(N\x88\x89K\x05M\x01\x01J\xfe\xff\xff\xff"s +  //
                        "\x8a\x02\x00\x80"s +                                   // LONG1 -32768
                        "\x8a\x00"s +                                           // LONG1 0
                        "\x8a\x08\x01\0\0\0\0\0\0\x80"s +                       // LONG1 int64 min + 1
                        "G\x3f\xf8\0\0\0\0\0\0"s +                              // BINFLOAT 1.5
                        "U\x02hiT\x03\0\0\0abc"s +                              // SHORT_BINSTRING, BINSTRING
                        "C\x02\x00\x01"s + "B\x01\0\0\0z"s +                    // SHORT_BINBYTES, BINBYTES
                        "X\x02\0\0\0\xc3\xa9"s +                                // BINUNICODE "é"
                        "\x8c\x01q"s + "\x8d\x01\0\0\0\0\0\0\0w"s +             // SHORT_BINUNICODE, BINUNICODE8
                        "t."s;
  const ValuePtr v = load(p);
  ASSERT_EQ(v->kind, Kind::Tuple);
  const auto& it = v->items;
  ASSERT_EQ(it.size(), 17u);
  EXPECT_EQ(it[0]->kind, Kind::None);
  EXPECT_TRUE(it[1]->kind == Kind::Bool && it[1]->boolean);
  EXPECT_TRUE(it[2]->kind == Kind::Bool && !it[2]->boolean);
  EXPECT_EQ(it[3]->integer, 5);
  EXPECT_EQ(it[4]->integer, 257);
  EXPECT_EQ(it[5]->integer, -2);
  EXPECT_EQ(it[6]->integer, -32768);
  EXPECT_EQ(it[7]->integer, 0);
  EXPECT_EQ(it[8]->integer, std::numeric_limits<int64_t>::min() + 1);
  EXPECT_TRUE(it[9]->kind == Kind::Float && it[9]->real == 1.5);
  EXPECT_TRUE(it[10]->is_string("hi"));
  EXPECT_TRUE(it[11]->is_string("abc"));
  EXPECT_TRUE(it[12]->kind == Kind::Bytes && it[12]->text == "\x00\x01"s);
  EXPECT_TRUE(it[13]->kind == Kind::Bytes && it[13]->text == "z");
  EXPECT_TRUE(it[14]->is_string("\xc3\xa9"));
  EXPECT_TRUE(it[15]->is_string("q"));
  EXPECT_TRUE(it[16]->is_string("w"));
}

TEST(Pickle, ContainersMemoAndFrames) {
  // Protocol 4 in a FRAME: ([1, 2, (3,), (3, 3), (3, 3, 3)], {"a": <that list>, "b": <that list>}).
  const std::string body = "]\x94(K\x01K\x02"s + "e"s +                                 // list, MEMOIZE 0, APPENDS 1 2
                           "K\x03\x94\x85"s + "a"s +                                    // 3, MEMOIZE 1, TUPLE1, APPEND
                           "h\x01h\x01\x86"s + "a"s +                                   // (3, 3)
                           "h\x01h\x01h\x01\x87"s + "a"s +                              // (3, 3, 3)
                           "}r\xff\xff\xff\xff"s +                                      // dict, LONG_BINPUT 0xffffffff
                           "(\x8c\x01"s + "ah\x00\x8c\x01"s + "bj\x00\x00\x00\x00u"s +  // SETITEMS
                           "\x86."s;
  std::string p = "\x80\x04\x95"s + std::string(8, '\0') + body;
  for (int i = 0; i < 8; ++i) p[3 + i] = static_cast<char>(static_cast<uint64_t>(body.size()) >> (8 * i));
  const ValuePtr v = load(p);
  ASSERT_EQ(v->kind, Kind::Tuple);
  const Value& list = *v->items[0];
  const Value& dict = *v->items[1];
  ASSERT_EQ(list.kind, Kind::List);
  ASSERT_EQ(list.items.size(), 5u);
  EXPECT_EQ(list.items[1]->integer, 2);
  EXPECT_EQ(list.items[4]->items.size(), 3u);
  EXPECT_EQ(list.items[4]->items[2]->integer, 3);
  ASSERT_EQ(dict.entries.size(), 2u);
  EXPECT_TRUE(dict.entries[0].first->is_string("a"));
  EXPECT_TRUE(dict.entries[1].first->is_string("b"));
  EXPECT_EQ(dict.entries[0].second.get(), &list);  // the memo gives the same object, not a copy
  EXPECT_EQ(dict.entries[1].second.get(), &list);
}

TEST(Pickle, TorchGlobalsBuildCallsAndPersistentIds) {
  // _rebuild_tensor_v2(PersistentId(('storage', FloatStorage, '0', 'cpu', 4)), 0, (4,), (1,), False, OrderedDict())
  const std::string p = "\x80\x02"s + "ctorch._utils\n_rebuild_tensor_v2\nq\x00((X\x07\0\0\0storage"s +
                        "ctorch\nFloatStorage\nX\x01\0\0\0"s + "0X\x03\0\0\0cpuK\x04tQ"s +
                        "K\x00K\x04\x85K\x01\x85\x89"s + "ccollections\nOrderedDict\n)RtR."s;
  const ValuePtr v = load(p);
  ASSERT_EQ(v->kind, Kind::Call);
  EXPECT_TRUE(v->callee->is_global("torch._utils._rebuild_tensor_v2"));
  ASSERT_EQ(v->items.size(), 6u);
  ASSERT_EQ(v->items[0]->kind, Kind::PersistentId);
  const Value& pid = *v->items[0]->items[0];
  ASSERT_EQ(pid.items.size(), 5u);
  EXPECT_TRUE(pid.items[0]->is_string("storage"));
  EXPECT_TRUE(pid.items[1]->is_global("torch.FloatStorage"));
  EXPECT_EQ(pid.items[4]->integer, 4);
  EXPECT_EQ(v->items[2]->items[0]->integer, 4);
  EXPECT_EQ(v->items[5]->kind, Kind::Dict);
}

TEST(Pickle, RefusesGlobalsOutsideTheAllowList) {
  for (const char* g :
       {"os\nsystem", "posix\nsystem", "builtins\neval", "__builtin__\neval", "subprocess\nPopen", "torch\nload",
        "torch._utils\n_rebuild_device_tensor_from_numpy", "collections\ndefaultdict", "torch\nTensor"}) {
    std::string dotted = g;
    std::replace(dotted.begin(), dotted.end(), '\n', '.');
    const std::string msg = error_of([&] {
      load(std::string("\x80\x02"
                       "c") +
           g + "\n)R.");
    });
    EXPECT_TRUE(contains_all(msg, {"test.pkl: refusing to load global '" + dotted + "'", "at byte 2"}));
  }
  // STACK_GLOBAL is checked the same way.
  EXPECT_TRUE(contains_all(error_of([] { load("\x80\x04\x8c\x02os\x8c\x06system\x93."s); }),
                           {"refusing to load global 'os.system'"}));
  // Allowed names may not be called unless they are constructors of what torch writes.
  EXPECT_TRUE(contains_all(error_of([] {
                             load(
                                 "\x80\x02"
                                 "ctorch\nFloatStorage\n)R.");
                           }),
                           {"global 'torch.FloatStorage' cannot be called"}));
  EXPECT_TRUE(contains_all(error_of([] {
                             load(
                                 "\x80\x02"
                                 "ccollections\nOrderedDict\nK\x01\x85R.");
                           }),
                           {"OrderedDict called with arguments"}));
}

TEST(Pickle, RefusesUnsupportedOpcodesByNameAndOffset) {
  const std::pair<std::string, std::string> cases[] = {
      {"\x80\x02(i", "unsupported opcode 0x69 (INST) at byte 3"},
      {"\x80\x02I1\n.", "unsupported opcode 0x49 (INT) at byte 2"},
      {"\x80\x02\x8f.", "unsupported opcode 0x8f (EMPTY_SET) at byte 2"},
      {"\x80\x02N0.", "unsupported opcode 0x30 (POP) at byte 3"},
      {"\x80\x02\xff", "unsupported opcode 0xff (unknown) at byte 2"},
      {"\x80\x02\x81", "unsupported opcode 0x81 (NEWOBJ) at byte 2"},
      {"\x80\x06N.", "unsupported pickle protocol 6"},
      {"\x80\x01N.", "unsupported pickle protocol 1"},
  };
  for (const auto& [p, want] : cases) EXPECT_TRUE(contains_all(error_of([&] { load(p); }), {"test.pkl: ", want}));
}

TEST(Pickle, RefusesHostileStructure) {
  const std::pair<std::string, std::string> cases[] = {
      {"", "without a STOP"},
      {"\x80\x02N", "without a STOP"},
      {".", "stack underflow at byte 0"},
      {"\x80\x02R", "stack underflow"},
      {"\x80\x02}(K\x01s.", "stack underflow"},  // SETITEM may not pop past the MARK
      {"\x80\x02t.", "no MARK"},
      {"\x80\x02h\x00."s, "memo index 0 is not defined"},
      {"\x80\x02j\x10\x27\0\0."s, "memo index 10000 is not defined"},
      {"\x80\x02X\xff\xff\xff\x7f", "BINUNICODE of 2147483647 bytes runs past the end of the data"},
      {"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff", "BINUNICODE8 of 18446744073709551615 bytes runs past"},
      {"\x80\x02T\xff\xff\xff\xff", "BINSTRING with negative length"},
      {"\x80\x02X\x01\x00"s, "BINUNICODE length of 4 bytes runs past"},
      {"\x80\x04\x95\xff\xff\x00\x00\x00\x00\x00\x00N."s, "FRAME of 65535 bytes runs past the end"},
      {"\x80\x02\x8a\x09\0\0\0\0\0\0\0\0\0."s, "LONG1 integer of 9 bytes does not fit in 64 bits"},
      {"\x80\x02"
       "cos",
       "GLOBAL argument is not a newline-terminated name"},
      {"\x80\x02K\x01R.", "stack underflow"},
      {"\x80\x02K\x01)R.", "REDUCE calls a int"},
      {"\x80\x02]}b.", "BUILD on a list"},
      {"\x80\x02N}b.", "BUILD on a None"},
      {"\x80\x02]K\x01K\x02s.", "SETITEM on a list"},
      {"\x80\x02}K\x01"
       "a.",
       "APPEND to a dict"},
      {"\x80\x02}(K\x01u.", "SETITEMS with an odd number of items"},
      {"\x80\x02]q\x00h\x00"s + "a.", "self-referencing"},
      {"\x80\x02]q\x00]h\x00"s + "aq\x01h\x00h\x01"s + "a.", "self-referencing"},  // cycle through a child
      {"\x80\x02}q\x00h\x00"s + "b.", "self-referencing"},                         // BUILD with itself as state
      {"\x80\x02K\x01Q\x8c\x01x\x93.", "STACK_GLOBAL needs two strings"},
  };
  for (const auto& [p, want] : cases) {
    SCOPED_TRACE(p);
    EXPECT_TRUE(contains_all(error_of([&] { load(p); }), {"test.pkl: ", want}));
  }
}

TEST(Pickle, NestingIsLimited) {
  // Depth kMaxDepth is fine, one more is refused, and a million MARKs cost no recursion.
  // n nested tuples have depth n - 1 (the innermost one is empty).
  const std::string ok = "\x80\x02" + std::string(kMaxDepth + 1, '(') + std::string(kMaxDepth + 1, 't') + ".";
  EXPECT_EQ(load(ok)->depth, kMaxDepth);
  const std::string deep = "\x80\x02" + std::string(kMaxDepth + 2, '(') + std::string(kMaxDepth + 2, 't') + ".";
  EXPECT_TRUE(contains_all(error_of([&] { load(deep); }), {"nesting deeper than 200 levels"}));
  const std::string marks = "\x80\x02" + std::string(1000000, '(') + "N.";
  EXPECT_EQ(load(marks)->kind, Kind::None);
}

}  // namespace
}  // namespace taiyi::io::pickle
