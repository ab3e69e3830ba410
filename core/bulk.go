package core

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
)

// EntryCounter is implemented by keyset stores that can count their entries
// cheaply; a bulk rewrap uses it for progress and ETA.
type EntryCounter interface {
	// CountEntries returns the number of DEKs in the keyset.
	CountEntries(ctx context.Context) (int, error)
}

// BulkOptions configure [Rewrapper.RewrapStore].
type BulkOptions struct {
	// PageSize is the number of entries read, rewrapped and stored per
	// store transaction; 1,024 when zero.
	PageSize int
	// Pages is the number of pages being rewrapped at once (the store
	// reads the next page and writes the previous one meanwhile); 2 when
	// zero.
	Pages int
	// Concurrency is the number of goroutines per page for records that
	// are not batched through [BatchProvider.RewrapKeys] (each then makes
	// its own vault calls); 16 when zero.
	Concurrency int
	// DryRun counts what would change from the records' labels alone
	// ([Rewrapper.Plan]): no key is used and nothing is written.
	DryRun bool
	// Progress, if set, is called from one goroutine after each page is
	// stored, with the totals so far.
	Progress func(BulkStats)
	// MaxFailures is the number of failures kept with their reasons; all
	// are counted. 100 when zero.
	MaxFailures int
}

// BulkFailure is one DEK a bulk rewrap could not rewrap; its record is
// unchanged.
type BulkFailure struct {
	ID  uint32
	Err error
}

// BulkStats are the totals of a bulk rewrap.
type BulkStats struct {
	// Seen is the number of entries read so far.
	Seen int
	// Rewrapped, AlreadyCurrent and Failed partition Seen (a dry run
	// counts what would be rewrapped as Rewrapped).
	Rewrapped, AlreadyCurrent, Failed int
	// Conflicts counts entries changed by another writer between read and
	// store; each was read again and retried.
	Conflicts int
	// Failures are the first MaxFailures failures, in id order per page.
	Failures []BulkFailure
	// From counts, for a dry run, the wraps that would be replaced or
	// removed, per "provider:key-id@version".
	From map[string]int
}

// FromSorted returns From's keys in order.
func (s *BulkStats) FromSorted() []string {
	keys := make([]string, 0, len(s.From))
	for k := range s.From {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func (s *BulkStats) fail(id uint32, err error, keep int) {
	s.Failed++
	if len(s.Failures) < keep {
		s.Failures = append(s.Failures, BulkFailure{ID: id, Err: err})
	}
}

// StanzaLabel names a stanza's KEK version as "provider:key-id@version".
func StanzaLabel(s Stanza) string {
	return fmt.Sprintf("%s:%s@%s", s.Provider, s.KeyID, s.KeyVersion)
}

// conflictRetries is how often a DEK changed by another writer is read and
// rewrapped again before it counts as failed.
const conflictRetries = 3

type bulkPage struct {
	entries []KeysetEntry
	results []RewrapResult
}

// RewrapStore rewraps every DEK of st, in pages of entries read in id order
// ([KeysetStore.Entries]), each page rewrapped with [Rewrapper.RewrapAll]
// (so batched through a plugin) and stored with one [KeysetStore.SwapAll]
// transaction. Reading, rewrapping and storing overlap.
//
// It is idempotent and resumable: a DEK is stored only by compare-and-swap
// against the record that was read, so a DEK changed meanwhile by another
// writer is read again and retried, never overwritten; a run stopped at any
// point (a kill included) leaves every DEK either as it was or rewrapped and
// verified, and a rerun skips what is already current. Failed DEKs keep
// their records and are reported in the stats; the run goes on.
//
// The error is non-nil when the store failed or ctx was done; the stats then
// say how far it got.
func (rw *Rewrapper) RewrapStore(ctx context.Context, st KeysetStore, o BulkOptions) (BulkStats, error) {
	if o.PageSize <= 0 {
		o.PageSize = 1024
	}
	if o.Pages <= 0 {
		o.Pages = 2
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.MaxFailures <= 0 {
		o.MaxFailures = 100
	}
	stats := BulkStats{From: map[string]int{}}
	if o.DryRun {
		return rw.dryRun(ctx, st, o, stats)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var readErr error
	pages := make(chan []KeysetEntry, 1)
	go func() {
		defer close(pages)
		readErr = readPages(ctx, st, o.PageSize, pages)
	}()

	done := make(chan bulkPage, o.Pages)
	var wg sync.WaitGroup
	for range o.Pages {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for entries := range pages {
				items := make([]RewrapItem, len(entries))
				for i := range entries {
					items[i] = RewrapItem{Key: entries[i].Wrapped, Context: entries[i].Context()}
				}
				done <- bulkPage{entries: entries, results: rw.RewrapAll(ctx, items, o.Concurrency)}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(done)
	}()

	var storeErr error
	for p := range done {
		if storeErr != nil || ctx.Err() != nil {
			continue // drain
		}
		if err := rw.storePage(ctx, st, p, &stats, o.MaxFailures); err != nil {
			storeErr = err
			cancel()
			continue
		}
		if o.Progress != nil {
			o.Progress(stats)
		}
	}
	switch {
	case storeErr != nil:
		return stats, storeErr
	case readErr != nil && !errors.Is(readErr, context.Canceled):
		return stats, readErr
	}
	return stats, context.Cause(ctx)
}

// readPages sends st's entries in pages of size n until the end, ctx is done
// or the store fails.
func readPages(ctx context.Context, st KeysetStore, n int, out chan<- []KeysetEntry) error {
	var after uint32
	for {
		page, err := st.Entries(ctx, after, n)
		if err != nil {
			return err
		}
		if len(page) == 0 {
			return nil
		}
		select {
		case out <- page:
		case <-ctx.Done():
			return ctx.Err()
		}
		after = page[len(page)-1].ID
	}
}

// storePage stores a page's rewrapped records and counts its outcomes. An
// error means the store failed; the page's counts are then not added.
func (rw *Rewrapper) storePage(ctx context.Context, st KeysetStore, p bulkPage, stats *BulkStats, keep int) error {
	var swaps []WrappedSwap
	var idx []int
	for i, r := range p.results {
		if r.Status == Rewrapped {
			swaps = append(swaps, WrappedSwap{ID: p.entries[i].ID, Prev: p.entries[i].Wrapped, Next: r.Key})
			idx = append(idx, i)
		}
	}
	res := make([]error, len(swaps))
	if len(swaps) > 0 {
		var err error
		res, err = st.SwapAll(ctx, swaps)
		if err != nil {
			return fmt.Errorf("store rewrapped keys: %w", err)
		}
		if len(res) != len(swaps) {
			return fmt.Errorf("store rewrapped keys: %d results for %d swaps: %w", len(res), len(swaps), ErrUnavailable)
		}
	}
	swapErr := make(map[int]error, len(idx))
	for j, i := range idx {
		swapErr[i] = res[j]
	}
	for i, r := range p.results {
		id := p.entries[i].ID
		if r.Err != nil && ctx.Err() != nil && errors.Is(r.Err, ctx.Err()) {
			continue // not reached: neither counted nor failed
		}
		stats.Seen++
		switch r.Status {
		case AlreadyCurrent:
			stats.AlreadyCurrent++
		case Rewrapped:
			status, err := Rewrapped, swapErr[i]
			if errors.Is(err, ErrConflict) {
				stats.Conflicts++
				status, err = rw.retryConflict(ctx, st, id)
			}
			switch {
			case err != nil:
				stats.fail(id, err, keep)
			case status == Rewrapped:
				stats.Rewrapped++
			default:
				stats.AlreadyCurrent++
			}
		default:
			stats.fail(id, r.Err, keep)
		}
	}
	return nil
}

// retryConflict reads DEK id again and rewraps and stores it alone, a few
// times, as another writer changed it since the page was read. It returns
// AlreadyCurrent when the new record needs nothing (or the DEK was deleted
// meanwhile: nothing is left to rewrap).
func (rw *Rewrapper) retryConflict(ctx context.Context, st KeysetStore, id uint32) (RewrapStatus, error) {
	var err error
	for range conflictRetries {
		var page []KeysetEntry
		page, err = st.Entries(ctx, id-1, 1)
		if err != nil {
			return RewrapFailed, err
		}
		if len(page) == 0 || page[0].ID != id {
			return AlreadyCurrent, nil
		}
		e := page[0]
		out, status, rerr := rw.Rewrap(ctx, e.Wrapped, e.Context())
		if rerr != nil || status == AlreadyCurrent {
			return status, rerr
		}
		err = st.SwapWrapped(ctx, id, e.Wrapped, out)
		if err == nil {
			return Rewrapped, nil
		}
		if !errors.Is(err, ErrConflict) {
			return RewrapFailed, err
		}
	}
	return RewrapFailed, fmt.Errorf("changed by another writer %d times in a row; run again: %w", conflictRetries, err)
}

// dryRun counts what RewrapStore would do, from labels alone.
func (rw *Rewrapper) dryRun(ctx context.Context, st KeysetStore, o BulkOptions, stats BulkStats) (BulkStats, error) {
	var after uint32
	for {
		page, err := st.Entries(ctx, after, o.PageSize)
		if err != nil {
			return stats, err
		}
		if len(page) == 0 {
			return stats, nil
		}
		for _, e := range page {
			stats.Seen++
			c := rw.Plan(e.Wrapped)
			if c.Current {
				stats.AlreadyCurrent++
				continue
			}
			stats.Rewrapped++
			for _, s := range c.Replace {
				stats.From[StanzaLabel(s)]++
			}
		}
		after = page[len(page)-1].ID
		if o.Progress != nil {
			o.Progress(stats)
		}
	}
}
