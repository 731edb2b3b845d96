// The quarantine journal's format, its checks, its edits and its locked read-merge-write, on
// real files in a temporary directory.
#include <sys/stat.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>
#include <thread>

#include "os/fs.h"
#include "poison/journal.h"
#include "tests/support/sysfs_tree.h"
#include "tieralloc/tieralloc.h"

namespace {

using namespace tieralloc::poison;
using tieralloc::testing::TempDir;

std::string slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

std::vector<JournalEntry> sample() {
  return {{0x1000, 64, TIERALLOC_POISON_CONSUMED, 1700000000, 0, 0},
          {0x240001000, 4096, kSourceBadblocks, 1700000001, 2, 1700000100},
          {0x7fff000, 512, kSourceManual, 1700000002, 0, 0}};
}

TEST(Journal, FormatAndParseRoundTrip) {
  std::string text = format_journal(sample());
  EXPECT_EQ(text.rfind("tieralloc-quarantine 1\n", 0), 0u);
  JournalFile f = parse_journal(text);
  ASSERT_EQ(f.state, JournalState::kOk) << f.problem;
  ASSERT_EQ(f.entries.size(), 3u);
  EXPECT_EQ(f.entries[1].phys, 0x7fff000u);  // sorted by address
  EXPECT_EQ(f.entries[2].repairs, 2u);
  EXPECT_EQ(f.entries[2].last_repair, 1700000100);
  EXPECT_EQ(f.entries[2].source, kSourceBadblocks);
  EXPECT_EQ(format_journal(f.entries), format_journal({sample()[0], sample()[2], sample()[1]}));
}

TEST(Journal, EveryDamageIsCaughtAndNothingOfItUsed) {
  const std::string good = format_journal(sample());
  // Every single-byte change anywhere in the file, and every truncation, is caught.
  for (size_t i = 0; i < good.size(); ++i) {
    std::string bad = good;
    bad[i] = static_cast<char>(bad[i] ^ 0x01);
    JournalFile f = parse_journal(bad);
    EXPECT_NE(f.state, JournalState::kOk) << "flipped byte " << i;
    EXPECT_TRUE(f.entries.empty());
    JournalFile t = parse_journal(good.substr(0, i));
    EXPECT_EQ(t.state, JournalState::kCorrupt) << "truncated to " << i;
    EXPECT_TRUE(t.entries.empty());
  }
  EXPECT_EQ(parse_journal("").state, JournalState::kCorrupt);
  EXPECT_EQ(parse_journal("\n\n\n").state, JournalState::kCorrupt);
  // A record that is well formed but not counted (a line spliced in, checksum recomputed by hand
  // is the only way past the CRC): the count must also match.
  std::string body = good.substr(0, good.rfind("end "));
  body += "bad 0x0000000000009000 0x40 manual 1 0 0\n";
  char trailer[64];
  snprintf(trailer, sizeof trailer, "end 3 crc32 %08x\n", crc32(body));
  EXPECT_EQ(parse_journal(body + trailer).state, JournalState::kCorrupt);
  snprintf(trailer, sizeof trailer, "end 4 crc32 %08x\n", crc32(body));
  EXPECT_EQ(parse_journal(body + trailer).state, JournalState::kOk);
}

TEST(Journal, NewerVersionIsLeftAlone) {
  TempDir d;
  const std::string path = d.path() + "/q";
  std::string newer = "tieralloc-quarantine 2\nwhatever a later format holds\n";
  std::ofstream(path) << newer;
  EXPECT_EQ(read_journal(path).state, JournalState::kNewer);
  EXPECT_EQ(update_journal(path, [](std::vector<JournalEntry>& e) { return add_entry(e, {1 << 20, 64, kSourceManual, 1, 0, 0}); }),
            -EEXIST);
  EXPECT_EQ(slurp(path), newer);
}

TEST(Journal, AddCoveredRangesAddNothingAndClearTrims) {
  std::vector<JournalEntry> e;
  EXPECT_TRUE(add_entry(e, {0x1000, 0x1000, kSourceManual, 1, 0, 0}));
  EXPECT_FALSE(add_entry(e, {0x1040, 0x40, TIERALLOC_POISON_REPORTED, 2, 0, 0}));  // inside it
  EXPECT_TRUE(add_entry(e, {0x1fc0, 0x80, TIERALLOC_POISON_REPORTED, 2, 0, 0}));   // sticks out
  EXPECT_EQ(e.size(), 2u);
  EXPECT_TRUE(note_repair(e, 0x1000, 0x1000, 99));
  EXPECT_EQ(e[0].repairs, 1u);
  EXPECT_EQ(e[1].repairs, 1u);  // overlaps the page too
  EXPECT_FALSE(note_repair(e, 0x9000, 0x1000, 99));
  // Clearing the middle of a record leaves both ends of it.
  EXPECT_EQ(clear_range(e, 0x1400, 0x400), 1u);
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[0].phys, 0x1000u);
  EXPECT_EQ(e[0].len, 0x400u);
  EXPECT_EQ(e[1].phys, 0x1800u);
  EXPECT_EQ(e[1].len, 0x800u);
  EXPECT_EQ(clear_range(e, 0, UINT64_MAX), 3u);
  EXPECT_TRUE(e.empty());
}

TEST(Journal, UpdateKeepsACorruptFileAsideAndWritesOnlyOnChange) {
  TempDir d;
  const std::string path = d.path() + "/state/tieralloc/quarantine";  // parent folders made
  auto add = [](uint64_t phys) {
    return [phys](std::vector<JournalEntry>& e) { return add_entry(e, {phys, 64, kSourceManual, 5, 0, 0}); };
  };
  ASSERT_EQ(update_journal(path, add(0x1000)), 0);
  struct stat st1;
  ASSERT_EQ(stat(path.c_str(), &st1), 0);
  EXPECT_EQ(st1.st_mode & 0777, 0600u);
  ASSERT_EQ(update_journal(path, add(0x1000)), 0);  // nothing new: the file is not rewritten
  struct stat st2;
  ASSERT_EQ(stat(path.c_str(), &st2), 0);
  EXPECT_EQ(st1.st_ino, st2.st_ino);

  std::string damaged = slurp(path);
  damaged[damaged.size() / 2] ^= 0x20;
  std::ofstream(path) << damaged;
  JournalFile found;
  ASSERT_EQ(update_journal(path, add(0x2000), &found), 0);
  EXPECT_EQ(found.state, JournalState::kCorrupt);
  EXPECT_EQ(slurp(path + ".corrupt"), damaged);  // kept, byte for byte
  JournalFile now = read_journal(path);
  ASSERT_EQ(now.state, JournalState::kOk);
  ASSERT_EQ(now.entries.size(), 1u);  // nothing of the corrupt file was trusted
  EXPECT_EQ(now.entries[0].phys, 0x2000u);
}

TEST(Journal, ConcurrentWritersLoseNothing) {
  TempDir d;
  const std::string path = d.path() + "/q";
  constexpr int kThreads = 4, kEach = 50;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t)
    ts.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i)
        update_journal(path, [&](std::vector<JournalEntry>& e) {
          return add_entry(e, {static_cast<uint64_t>(t * kEach + i) << 12, 64, kSourceManual, 1, 0, 0});
        });
    });
  for (auto& t : ts) t.join();
  JournalFile f = read_journal(path);
  ASSERT_EQ(f.state, JournalState::kOk);
  EXPECT_EQ(f.entries.size(), static_cast<size_t>(kThreads * kEach));
}

TEST(Journal, PathUnderARegularFileFails) {
  TempDir d;
  std::ofstream(d.path() + "/file") << "x";
  EXPECT_EQ(update_journal(d.path() + "/file/q",
                           [](std::vector<JournalEntry>& e) { return add_entry(e, {0, 64, kSourceManual, 1, 0, 0}); }),
            -ENOTDIR);
}

}  // namespace
