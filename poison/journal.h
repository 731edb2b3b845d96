// The quarantine journal: physical memory known bad on this machine, kept in one small text file
// (TIERALLOC_QUARANTINE_FILE) so that a restarted process, or another one, never hands it out
// again. Written by libtieralloc's poison worker thread (never in a signal handler) and by
// `tieralloc poison`; both read-merge-write it under a lock file and replace it atomically.
//
// Format (version 1), one record per line, a CRC32 of every byte before the last line:
//
//   tieralloc-quarantine 1
//   # comment lines (ignored, but covered by the checksum)
//   bad 0x<phys> 0x<len> <source> <reported> <repairs> <last_repair>
//   end <number of records> crc32 <8 hex digits>
//
// times are Unix seconds; repairs counts the pages on the range that a process rebuilt onto a
// fresh frame (the data moved; the frame stays bad until something outside tieralloc repairs it,
// after which `tieralloc poison clear` removes the record). A file that fails any check is
// "corrupt": reported, never used, and kept aside as <file>.corrupt when the journal is next
// written. A file of a newer version is left alone (neither read nor overwritten).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace tieralloc::poison {

// Journal sources: TIERALLOC_POISON_CONSUMED .. _PHYSICAL (tieralloc.h), _KNOWN is never
// journaled (it is what the journal and badblocks lists give back), and two of the journal's own.
constexpr int kSourceBadblocks = 16;  // imported from an nvdimm badblocks list (`tieralloc poison scan`)
constexpr int kSourceManual = 17;     // `tieralloc poison report`
// "consumed", "found", "reported", "physical", "badblocks", "manual"; nullptr for others.
const char* source_name(int source);
int source_from_name(std::string_view name);  // 0 when unknown

struct JournalEntry {
  uint64_t phys = 0, len = 0;
  int source = 0;
  int64_t reported = 0;     // first report, Unix seconds
  uint32_t repairs = 0;     // pages on the range rebuilt onto fresh frames
  int64_t last_repair = 0;  // Unix seconds, 0 = never
  uint64_t end() const { return phys + len; }
};

enum class JournalState {
  kMissing,     // no file: nothing known bad
  kOk,
  kCorrupt,     // fails the format or checksum: ignored
  kNewer,       // a later format version: ignored and never overwritten
  kUnreadable,  // open/read failed (problem says why)
};
const char* state_name(JournalState s);

struct JournalFile {
  JournalState state = JournalState::kMissing;
  std::vector<JournalEntry> entries;  // sorted by (phys, len)
  std::string problem;                // for kCorrupt, kNewer, kUnreadable
};

constexpr size_t kMaxJournalEntries = 65536;

uint32_t crc32(std::string_view data);
std::string format_journal(const std::vector<JournalEntry>& entries);
JournalFile parse_journal(std::string_view text);
JournalFile read_journal(const std::string& path);

// Entry edits, on a sorted vector, each returning whether anything changed.
// A range already wholly covered by one record adds nothing; otherwise it becomes a record.
bool add_entry(std::vector<JournalEntry>& entries, const JournalEntry& e);
// Counts a rebuild of the page at [phys, phys+len) in every record overlapping it.
bool note_repair(std::vector<JournalEntry>& entries, uint64_t phys, uint64_t len, int64_t when);
// Removes [phys, phys+len) from the records: wholly covered records go, others keep what lies
// outside it. Returns the number of records touched.
size_t clear_range(std::vector<JournalEntry>& entries, uint64_t phys, uint64_t len);

// Read-merge-write under an exclusive lock on <path>.lock: reads the file, lets `edit` change the
// records (it returns true when it did), and replaces the file durably only then. A corrupt file
// is renamed to <path>.corrupt first (nothing in it is trusted, nothing is destroyed). 0, or
// -errno: of the lock, the read, or the write; -EEXIST for a newer-version file, -ENOSPC past
// kMaxJournalEntries. `found` (optional) gets what was read.
int update_journal(const std::string& path, const std::function<bool(std::vector<JournalEntry>&)>& edit,
                   JournalFile* found = nullptr);

}  // namespace tieralloc::poison
