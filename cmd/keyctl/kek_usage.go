package main

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
)

// usagePageSize is the number of keyset entries read per page by a usage
// scan: a SQL keyset of millions of DEKs is never held in memory at once.
const usagePageSize = 4096

// maxListedDEKs is the number of DEK ids named when a retirement makes DEKs
// unreadable.
const maxListedDEKs = 10

// scanKeyset calls fn for every DEK of the configured keyset store, in id
// order, reading pages of [core.KeysetStore.Entries]. It reads wrapped keys
// only: no provider is started, no key is used, nothing is prompted for. A
// keyset that holds no DEK yet (a missing file, an empty SQL keyset) is
// scanned as empty. where describes the store for output.
func (a *app) scanKeyset(fn func(e *core.KeysetEntry)) (where string, err error) {
	return a.withKeysetStore(func(cfg *config.Config, st core.KeysetStore) error {
		where := cfg.Keyset.String()
		var after uint32
		for {
			page, err := st.Entries(a.ctx, after, usagePageSize)
			if err != nil {
				return fmt.Errorf("keyset %s: read DEKs after id %08x: %w", where, after, err)
			}
			if len(page) == 0 {
				return nil
			}
			for i := range page {
				fn(&page[i])
			}
			after = page[len(page)-1].ID
		}
	})
}

// versionUsage is what the DEKs of the keyset store need of one KEK version.
type versionUsage struct {
	// Label names the version as "provider:key-id@version" (core.StanzaLabel).
	Label    string `json:"kek_version"`
	Provider string `json:"provider"`
	KeyID    string `json:"key_id"`
	Version  string `json:"version"`
	// DEKs is the number of DEKs with a wrap under the version.
	DEKs int `json:"deks"`
	// Only is the number of DEKs whose every wrap is under the version:
	// they become unreadable without it.
	Only int `json:"only"`
	// Primary, DecryptOnly and Retired split DEKs by DEK state.
	Primary     int `json:"primary"`
	DecryptOnly int `json:"decrypt_only"`
	Retired     int `json:"retired"`
}

// kekUsageResult is the output of `keyctl kek usage`.
type kekUsageResult struct {
	Keyset   string         `json:"keyset"`
	DEKs     int            `json:"deks"`
	Versions []versionUsage `json:"versions"`
}

// kekUsage scans the configured keyset store and counts, per KEK version
// named in it, the DEKs wrapped under it. If ref is not nil only the
// versions of that KEK are reported (DEKs still counts them all).
func (a *app) kekUsage(ref *core.KeyRef) (kekUsageResult, error) {
	byLabel := map[string]*versionUsage{}
	res := kekUsageResult{Versions: []versionUsage{}}
	where, err := a.scanKeyset(func(e *core.KeysetEntry) {
		res.DEKs++
		if e.Wrapped == nil {
			return
		}
		seen := map[string]bool{}
		for _, s := range e.Wrapped.Stanzas {
			l := core.StanzaLabel(s)
			if seen[l] || (ref != nil && s.Ref() != *ref) {
				continue
			}
			seen[l] = true
			u := byLabel[l]
			if u == nil {
				u = &versionUsage{Label: l, Provider: s.Provider, KeyID: s.KeyID, Version: s.KeyVersion}
				byLabel[l] = u
			}
			u.DEKs++
			switch e.State {
			case core.StatePrimary:
				u.Primary++
			case core.StateDecryptOnly:
				u.DecryptOnly++
			case core.StateRetired:
				u.Retired++
			}
		}
		if len(seen) == 1 && onlyLabel(e.Wrapped.Stanzas) {
			for l := range seen {
				byLabel[l].Only++
			}
		}
	})
	res.Keyset = where
	if err != nil {
		return res, err
	}
	for _, u := range byLabel {
		res.Versions = append(res.Versions, *u)
	}
	slices.SortFunc(res.Versions, func(x, y versionUsage) int {
		return cmp.Or(cmp.Compare(x.Provider, y.Provider), cmp.Compare(x.KeyID, y.KeyID), compareVersions(x.Version, y.Version))
	})
	return res, nil
}

// onlyLabel reports whether every stanza names the same KEK version.
func onlyLabel(ss []core.Stanza) bool {
	for _, s := range ss[1:] {
		if core.StanzaLabel(s) != core.StanzaLabel(ss[0]) {
			return false
		}
	}
	return len(ss) > 0
}

// compareVersions orders KEK versions numerically when both are decimal
// numbers (local versions: 9 before 10), else as strings.
func compareVersions(x, y string) int {
	nx, errx := strconv.ParseUint(x, 10, 64)
	ny, erry := strconv.ParseUint(y, 10, 64)
	if errx == nil && erry == nil {
		return cmp.Compare(nx, ny)
	}
	return cmp.Compare(x, y)
}

// kekDependents is what retiring one KEK version would do to the DEKs of the
// configured keyset store.
type kekDependents struct {
	// Keyset describes the store.
	Keyset string
	// Only counts the DEKs that have no readable wrap but under the
	// version: without it they become unreadable.
	Only int
	// OnlyIDs are the first maxListedDEKs of them, in the store's order
	// (id order for a SQL store, creation order for a file).
	OnlyIDs []uint32
	// Shared counts the DEKs with a wrap under the version and another
	// one that still unwraps: they lose one of several wraps.
	Shared int
}

// dependents scans the configured keyset store for the DEKs wrapped under
// version v of KEK ref. A wrap under a version in dead (labels as
// core.StanzaLabel: disabled or destroyed versions of the same KEK) is no
// alternative to v.
func (a *app) dependents(ref core.KeyRef, v string, dead map[string]bool) (kekDependents, error) {
	var d kekDependents
	where, err := a.scanKeyset(func(e *core.KeysetEntry) {
		if e.Wrapped == nil {
			return
		}
		under, other := false, false
		for _, s := range e.Wrapped.Stanzas {
			switch {
			case s.Ref() == ref && s.KeyVersion == v:
				under = true
			case !dead[core.StanzaLabel(s)]:
				other = true
			}
		}
		switch {
		case under && other:
			d.Shared++
		case under:
			d.Only++
			if len(d.OnlyIDs) < maxListedDEKs {
				d.OnlyIDs = append(d.OnlyIDs, e.ID)
			}
		}
	})
	d.Keyset = where
	return d, err
}

// idList renders the first DEK ids of n as "0000000a, 0000000b, ...".
func idList(ids []uint32, n int) string {
	parts := make([]string, 0, len(ids)+1)
	for _, id := range ids {
		parts = append(parts, fmt.Sprintf("%08x", id))
	}
	if n > len(ids) {
		parts = append(parts, fmt.Sprintf("and %d more", n-len(ids)))
	}
	return strings.Join(parts, ", ")
}

// usageCommand is `keyctl kek usage`.
func (a *app) usageCommand(provName *string) *cobra.Command {
	return &cobra.Command{
		Use:   "usage [--provider NAME]",
		Short: "Count the keyset DEKs wrapped under each KEK version",
		Long: `Scan the configured keyset store (file, SQLite or PostgreSQL) and count, for
every KEK version named in it (as provider:key-id@version, configured or not),
the DEKs wrapped under it (DEKS), those wrapped under nothing else (ONLY: they
become unreadable without that version) and the DEKs by state. Only wrapped
keys are read: no provider is started unless --provider names one, whose
versions alone are then shown.

Wrapped keys kept elsewhere (files, your own database columns) are not seen;
check those with 'keyctl inspect' and move them with 'keyctl rewrap FILE...'.`,
		Example: `  keyctl kek usage
  keyctl kek usage --provider hsm --json`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			var ref *core.KeyRef
			if *provName != "" {
				p, err := a.provider(*provName)
				if err != nil {
					return err
				}
				r := p.Ref()
				ref = &r
			}
			res, err := a.kekUsage(ref)
			if err != nil {
				return err
			}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			tw := tabwriter.NewWriter(a.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintf(tw, "KEK VERSION\tDEKS\tONLY\tPRIMARY\tDECRYPT-ONLY\tRETIRED\n")
			for _, u := range res.Versions {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", oneLine(u.Label), u.DEKs, u.Only, u.Primary, u.DecryptOnly, u.Retired)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			a.printf("%d DEK(s) in keyset %s\n", res.DEKs, res.Keyset)
			return nil
		}),
	}
}
