// Package localfile is keyctl's local key-file provider: a KEK file holding
// versioned AES-256 keys, for development and for small deployments that keep
// their master key on disk.
//
// A key file (format "keyctl-localfile/1", specified in docs/localfile.md of
// the repository) holds one KEK id and its versions "1", "2", ...; one
// version is current and wraps new DEKs, older versions keep unwrapping until
// they are disabled or destroyed. The key material may be protected with a
// passphrase (scrypt, then AES-256-GCM).
//
// [Provider] implements [core.KeyProvider], [core.KeyRotator],
// [core.VaultRewrapper] and [core.HealthChecker]. Wraps are AES-256-GCM
// ([core.AlgAES256GCM]) under the current version, binding the key id, the
// key version and the encryption context as associated data.
//
// Every change to the file (rotate, disable, enable, destroy) takes an
// exclusive lock on PATH.lock, re-reads the file under the lock, and replaces
// the file atomically, so several processes may share one key file.
package localfile

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keyctl/keyctl/core"
)

// Type is the provider type written in the stanzas of this provider.
const Type = "localfile"

const (
	nonceSize   = 12
	tagSize     = 16
	wrappedSize = nonceSize + core.DEKSize + tagSize

	// wrapDomain separates this provider's wrap associated data from any
	// other use of the same key.
	wrapDomain = "keyctl-localfile/1 wrap"

	// lockTimeout bounds the wait for PATH.lock when the caller's context
	// has no deadline of its own.
	lockTimeout = 30 * time.Second
)

// ErrCurrentVersion reports an operation that is refused on the current KEK
// version (disabling or destroying it). Rotate first, so that another version
// becomes current. It wraps core.ErrFailedPrecondition.
var ErrCurrentVersion = fmt.Errorf("refused on the current key version: %w", core.ErrFailedPrecondition)

// VersionState is the state of one KEK version in a key file.
type VersionState string

// Version states.
const (
	// StateEnabled: the version unwraps; the current version is always
	// enabled.
	StateEnabled VersionState = "enabled"
	// StateDisabled: the key is kept, but unwrap refuses with
	// core.ErrKeyDisabled until the version is enabled again.
	StateDisabled VersionState = "disabled"
	// StateDestroyed: the key bytes were removed from the file; only a
	// tombstone remains, and unwrap gives core.ErrKeyNotFound.
	StateDestroyed VersionState = "destroyed"
)

// VersionInfo describes one KEK version, without its key.
type VersionInfo struct {
	// Version is the version string, as written in stanzas ("1", "2", ...).
	Version string
	// State is the version's state.
	State VersionState
	// Created is when the version was created (UTC).
	Created time.Time
	// Current reports whether WrapKey uses this version.
	Current bool
}

// CreateOptions configures [Create].
type CreateOptions struct {
	// KeyID is the KEK id written in every stanza. Required; 1 to
	// core.MaxKeyIDLen bytes of printable UTF-8 (the rules of a core
	// stanza key id).
	KeyID string
	// Passphrase, if not nil, protects the key material: it is sealed with
	// AES-256-GCM under a key derived by scrypt from the passphrase. nil
	// writes an unprotected file. An empty non-nil passphrase is refused.
	// The caller keeps ownership of the slice.
	Passphrase []byte
	// ImportKeys, if not nil, are existing 32-byte AES keys that become
	// versions "1".."n", the last one current. nil creates one fresh random
	// key as version "1". The slices are copied; the caller keeps
	// ownership.
	ImportKeys [][]byte
}

// Options configures [Open].
type Options struct {
	// Passphrase returns the passphrase of a protected key file. It is
	// called at most once, and only when the file is protected; Open zeroes
	// the returned slice when done. nil with a protected file is an error
	// wrapping core.ErrPermission.
	Passphrase func() ([]byte, error)
	// RequireProtected refuses a key file that is not passphrase-protected,
	// so that a protected file swapped for an unprotected one (a downgrade)
	// is noticed. Set it when the configuration names a passphrase.
	RequireProtected bool
}

// Provider is a key file opened for use. It keeps one ready AES-GCM
// instance per version in memory; it does not keep raw key bytes. It is safe
// for concurrent use.
//
// A Provider sees changes made to the file by another process (a rotation,
// say) when it changes the file itself, and when it is asked to unwrap a
// version it does not know and the file has changed on disk.
type Provider struct {
	path     string // as given by the caller, for messages
	file     string // symlinks resolved: every read and write goes here
	lockFile string
	ref      core.KeyRef
	seal     *sealer // nil: unprotected file

	st       atomic.Pointer[state]
	mu       sync.Mutex // serialises mutations within this Provider
	reloadMu sync.Mutex // serialises reloads after an unknown version
}

// state is an immutable snapshot of the key file in memory.
type state struct {
	current  *kver
	versions []*kver // ascending
	byName   map[string]*kver
	file     os.FileInfo // the file this snapshot was read from or written to
}

// kver is one version in memory.
type kver struct {
	name     string
	state    VersionState
	created  time.Time
	aead     cipher.AEAD // nil when destroyed
	adPrefix []byte      // wrap associated data up to the encryption context
}

// Create writes a new key file at path and returns it opened. It refuses if
// path exists. The file is written atomically with mode 0600.
func Create(path string, opts CreateOptions) (*Provider, error) {
	if err := validKeyID(opts.KeyID); err != nil {
		return nil, fmt.Errorf("localfile: create %s: %w", path, err)
	}
	if opts.Passphrase != nil && len(opts.Passphrase) == 0 {
		return nil, fmt.Errorf("localfile: create %s: empty passphrase (pass nil for an unprotected file): %w", path, core.ErrMalformed)
	}
	if len(opts.ImportKeys) > maxVersions {
		return nil, fmt.Errorf("localfile: create %s: %d keys to import, limit %d: %w", path, len(opts.ImportKeys), maxVersions, core.ErrMalformed)
	}
	if opts.ImportKeys != nil && len(opts.ImportKeys) == 0 {
		return nil, fmt.Errorf("localfile: create %s: ImportKeys is empty (pass nil for a fresh key): %w", path, core.ErrMalformed)
	}
	now := time.Now().UTC().Truncate(time.Second)
	kf := &keyFile{keyID: opts.KeyID}
	defer kf.zero()
	if opts.ImportKeys == nil {
		k, err := newKey()
		if err != nil {
			return nil, fmt.Errorf("localfile: create %s: %w", path, err)
		}
		kf.versions = append(kf.versions, fileVersion{name: "1", num: 1, state: StateEnabled, created: now, key: k})
	}
	for i, k := range opts.ImportKeys {
		if len(k) != keySize {
			return nil, fmt.Errorf("localfile: create %s: ImportKeys[%d] is %d bytes, want %d: %w", path, i, len(k), keySize, core.ErrMalformed)
		}
		n := uint64(i + 1)
		kf.versions = append(kf.versions, fileVersion{
			name: fmt.Sprint(n), num: n, state: StateEnabled, created: now, key: append([]byte(nil), k...),
		})
	}
	kf.current = kf.versions[len(kf.versions)-1].name

	var s *sealer
	if opts.Passphrase != nil {
		salt := make([]byte, saltSize)
		if _, err := rand.Read(salt); err != nil {
			return nil, fmt.Errorf("localfile: create %s: salt: %w", path, err)
		}
		var err error
		if s, err = newSealer(opts.Passphrase, kdfParams{salt: salt, n: defaultScrypt.n, r: defaultScrypt.r, p: defaultScrypt.p}); err != nil {
			return nil, fmt.Errorf("localfile: create %s: %w", path, err)
		}
	}
	data, err := encodeFile(kf, s)
	if err != nil {
		return nil, fmt.Errorf("localfile: create %s: %w", path, err)
	}
	defer clear(data)
	fi, err := writeAtomic(path, data, true)
	if err != nil {
		return nil, fmt.Errorf("localfile: create %s: %w", path, err)
	}
	file, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("localfile: create %s: %w", path, osError(err))
	}
	p := &Provider{path: path, file: file, lockFile: file + ".lock", ref: core.KeyRef{Provider: Type, KeyID: kf.keyID}, seal: s}
	st, err := buildState(kf, fi)
	if err != nil {
		return nil, fmt.Errorf("localfile: create %s: %w", path, err)
	}
	p.st.Store(st)
	return p, nil
}

// Open opens the key file at path. It refuses a file whose mode lets group
// or others read or write it (an error wrapping core.ErrPermission), a file
// over 1 MiB, and any malformed content (core.ErrMalformed, naming the file).
// A protected file needs opts.Passphrase; a wrong passphrase gives an error
// wrapping core.ErrPermission.
func Open(path string, opts Options) (*Provider, error) {
	file, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, fmt.Errorf("localfile: key file %s: %w", path, osError(err))
	}
	called := false
	getSealer := func(k kdfParams) (*sealer, error) {
		if opts.Passphrase == nil {
			return nil, fmt.Errorf("the key file is passphrase-protected and no passphrase source was given: %w", core.ErrPermission)
		}
		if called {
			return nil, errors.New("passphrase asked twice") // cannot happen: Open parses once
		}
		called = true
		pass, err := opts.Passphrase()
		if err != nil {
			clear(pass)
			return nil, fmt.Errorf("read passphrase: %w", err)
		}
		defer clear(pass)
		if len(pass) == 0 {
			return nil, fmt.Errorf("empty passphrase: %w", core.ErrPermission)
		}
		return newSealer(pass, k)
	}
	kf, s, fi, err := readKeyFile(path, file, getSealer)
	if err != nil {
		return nil, err
	}
	defer kf.zero()
	if opts.RequireProtected && s == nil {
		return nil, fmt.Errorf("localfile: key file %s is not passphrase-protected, but a passphrase was configured for it (was the file replaced?): %w", path, core.ErrPermission)
	}
	p := &Provider{path: path, file: file, lockFile: file + ".lock", ref: core.KeyRef{Provider: Type, KeyID: kf.keyID}, seal: s}
	st, err := buildState(kf, fi)
	if err != nil {
		return nil, fmt.Errorf("localfile: key file %s: %w", path, err)
	}
	p.st.Store(st)
	return p, nil
}

// Path returns the key file's path as given to Open or Create.
func (p *Provider) Path() string { return p.path }

// Ref returns {Provider: "localfile", KeyID: the key file's key id}.
func (p *Provider) Ref() core.KeyRef { return p.ref }

// CurrentVersion returns the version WrapKey uses now.
func (p *Provider) CurrentVersion(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: current version: %w", p.ref, err)
	}
	return p.st.Load().current.name, nil
}

// WrapKey wraps dek with AES-256-GCM under the current version, with a fresh
// random nonce; the stanza's Data is nonce || ciphertext || tag. The key id,
// the version and ec are bound as associated data. Errors wrap
// core.ErrMalformed (DEK length, invalid context) or the context's error.
func (p *Provider) WrapKey(ctx context.Context, dek core.DEK, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, fmt.Errorf("%s: wrap: %w", p.ref, err)
	}
	if err := dek.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("%s: wrap: %w", p.ref, err)
	}
	if err := ec.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("%s: wrap: %w", p.ref, err)
	}
	return p.wrap(p.st.Load().current, dek, ec)
}

func (p *Provider) wrap(v *kver, dek core.DEK, ec core.Context) (core.Stanza, error) {
	data := make([]byte, nonceSize, wrappedSize)
	if _, err := rand.Read(data); err != nil {
		return core.Stanza{}, fmt.Errorf("%s version %q: wrap: nonce: %w", p.ref, v.name, err)
	}
	data = v.aead.Seal(data, data[:nonceSize], dek, v.ad(ec))
	return core.Stanza{
		Provider:   Type,
		KeyID:      p.ref.KeyID,
		KeyVersion: v.name,
		Algorithm:  core.AlgAES256GCM,
		Data:       data,
	}, nil
}

// UnwrapKey opens a stanza made by WrapKey of a provider with the same Ref,
// with the same encryption context, and returns a fresh DEK the caller owns.
// Errors wrap core.ErrNoProvider (another Ref), core.ErrUnknownAlgorithm,
// core.ErrKeyNotFound (unknown or destroyed version), core.ErrKeyDisabled,
// core.ErrUnwrapFailed (altered bytes, other context, other key: the error
// does not say which), core.ErrMalformed (invalid context) or the context's
// error.
func (p *Provider) UnwrapKey(ctx context.Context, s core.Stanza, ec core.Context) (core.DEK, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("%s: unwrap: %w", p.ref, err)
	}
	if err := ec.Validate(); err != nil {
		return nil, fmt.Errorf("%s: unwrap: %w", p.ref, err)
	}
	return p.unwrap(s, ec)
}

func (p *Provider) unwrap(s core.Stanza, ec core.Context) (core.DEK, error) {
	if s.Provider != Type || s.KeyID != p.ref.KeyID {
		return nil, fmt.Errorf("%s: unwrap: the wrap is for %s: %w", p.ref, quoteRef(s.Ref()), core.ErrNoProvider)
	}
	if s.Algorithm != core.AlgAES256GCM {
		return nil, fmt.Errorf("%s version %s: unwrap: algorithm %s: %w", p.ref, quote(s.KeyVersion), s.Algorithm, core.ErrUnknownAlgorithm)
	}
	v, err := p.usable(s.KeyVersion, "unwrap")
	if err != nil {
		return nil, err
	}
	if len(s.Data) != wrappedSize {
		return nil, fmt.Errorf("%s version %q: %w", p.ref, v.name, core.ErrUnwrapFailed)
	}
	dek, err := v.aead.Open(nil, s.Data[:nonceSize], s.Data[nonceSize:], v.ad(ec))
	if err != nil {
		return nil, fmt.Errorf("%s version %q: %w", p.ref, v.name, core.ErrUnwrapFailed)
	}
	return core.DEK(dek), nil
}

// usable returns the version named, if it exists and is enabled. An unknown
// version makes the provider look whether the file changed on disk (another
// process may have rotated) before giving up.
func (p *Provider) usable(name, op string) (*kver, error) {
	st := p.st.Load()
	v, ok := st.byName[name]
	if !ok && p.refreshIfChanged(st) {
		v, ok = p.st.Load().byName[name]
	}
	switch {
	case !ok:
		return nil, fmt.Errorf("%s: %s: no version %s in key file %s: %w", p.ref, op, quote(name), p.path, core.ErrKeyNotFound)
	case v.state == StateDestroyed:
		return nil, fmt.Errorf("%s version %q: %s: the version was destroyed: %w", p.ref, v.name, op, core.ErrKeyNotFound)
	case v.state == StateDisabled:
		return nil, fmt.Errorf("%s version %q: %s: the version is disabled (enable it to use it again): %w", p.ref, v.name, op, core.ErrKeyDisabled)
	}
	return v, nil
}

// RewrapKey moves src, a stanza of this provider's Ref, onto the current
// version: it unwraps with the version src names and wraps under the current
// one, with the same encryption context, without the DEK leaving the
// provider. A stanza of another Ref gives an error wrapping both
// core.ErrNoProvider (this provider cannot open it) and core.ErrUnsupported
// (unwrap it with its own provider and wrap it here instead). Other errors
// are those of UnwrapKey and WrapKey.
func (p *Provider) RewrapKey(ctx context.Context, src core.Stanza, ec core.Context) (core.Stanza, error) {
	if err := ctx.Err(); err != nil {
		return core.Stanza{}, fmt.Errorf("%s: rewrap: %w", p.ref, err)
	}
	if err := ec.Validate(); err != nil {
		return core.Stanza{}, fmt.Errorf("%s: rewrap: %w", p.ref, err)
	}
	if src.Provider != Type || src.KeyID != p.ref.KeyID {
		return core.Stanza{}, fmt.Errorf("%s: rewrap: the wrap is for %s: %w: %w", p.ref, quoteRef(src.Ref()), core.ErrNoProvider, core.ErrUnsupported)
	}
	dek, err := p.unwrap(src, ec)
	if err != nil {
		return core.Stanza{}, fmt.Errorf("rewrap: %w", err)
	}
	defer dek.Zero()
	return p.wrap(p.st.Load().current, dek, ec)
}

// RotateKey creates a new version, numbered one past the highest version in
// the file, makes it current and writes the file atomically under the lock.
// It returns the new version string. Errors wrap core.ErrPermission,
// core.ErrUnavailable (I/O, or the lock held past the deadline),
// core.ErrMalformed (the file on disk became invalid), core.ErrKeyNotFound
// (the file now holds another key id), core.ErrUnsupported (the file holds
// the maximum of 4096 versions) or the context's error.
func (p *Provider) RotateKey(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("%s: rotate: %w", p.ref, err)
	}
	var name string
	err := p.mutate(ctx, "rotate", func(kf *keyFile) (bool, error) {
		if len(kf.versions) >= maxVersions {
			return false, fmt.Errorf("the key file holds %d versions, the limit: %w", len(kf.versions), core.ErrUnsupported)
		}
		last := kf.versions[len(kf.versions)-1].num
		if last >= maxVersionNum {
			return false, fmt.Errorf("version numbers exhausted: %w", core.ErrUnsupported)
		}
		k, err := newKey()
		if err != nil {
			return false, err
		}
		name = fmt.Sprint(last + 1)
		kf.versions = append(kf.versions, fileVersion{
			name: name, num: last + 1, state: StateEnabled, created: time.Now().UTC().Truncate(time.Second), key: k,
		})
		kf.current = name
		return true, nil
	})
	if err != nil {
		return "", err
	}
	return name, nil
}

// Health reports whether the current version is usable and the key file is
// still in place with safe permissions. Errors wrap core.ErrKeyNotFound (the
// file is gone), core.ErrPermission (its mode now lets group or others in),
// core.ErrUnavailable or the context's error.
func (p *Provider) Health(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: health: %w", p.ref, err)
	}
	st := p.st.Load()
	if st.current == nil || st.current.aead == nil || st.current.state != StateEnabled {
		return fmt.Errorf("%s: health: current version not usable: %w", p.ref, core.ErrKeyDisabled)
	}
	fi, err := os.Stat(p.file)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: health: key file %s no longer exists: %w", p.ref, p.path, core.ErrKeyNotFound)
		}
		return fmt.Errorf("%s: health: key file %s: %w", p.ref, p.path, osError(err))
	}
	if err := checkMode(p.path, fi); err != nil {
		return fmt.Errorf("%s: health: %w", p.ref, err)
	}
	return nil
}

// Versions lists the versions known in memory, oldest first.
func (p *Provider) Versions() []VersionInfo {
	st := p.st.Load()
	out := make([]VersionInfo, len(st.versions))
	for i, v := range st.versions {
		out[i] = VersionInfo{Version: v.name, State: v.state, Created: v.created, Current: v == st.current}
	}
	return out
}

// DisableVersion disables version v: it stays in the file, but unwrap
// refuses it with core.ErrKeyDisabled. Disabling a disabled version does
// nothing. It refuses the current version (ErrCurrentVersion) and a
// destroyed or unknown one (core.ErrKeyNotFound).
func (p *Provider) DisableVersion(v string) error {
	return p.setState(v, "disable", true, func(fv *fileVersion) (bool, error) {
		switch fv.state {
		case StateDisabled:
			return false, nil
		case StateDestroyed:
			return false, fmt.Errorf("version %q was destroyed: %w", fv.name, core.ErrKeyNotFound)
		}
		fv.state = StateDisabled
		return true, nil
	})
}

// EnableVersion enables a disabled version v again. Enabling an enabled
// version does nothing; a destroyed or unknown version gives
// core.ErrKeyNotFound.
func (p *Provider) EnableVersion(v string) error {
	return p.setState(v, "enable", false, func(fv *fileVersion) (bool, error) {
		switch fv.state {
		case StateEnabled:
			return false, nil
		case StateDestroyed:
			return false, fmt.Errorf("version %q was destroyed and cannot be enabled: %w", fv.name, core.ErrKeyNotFound)
		}
		fv.state = StateEnabled
		return true, nil
	})
}

// DestroyVersion removes the key of version v from the file, keeping a
// tombstone (its version number, state "destroyed" and creation time), so
// that its number is never reused. Unwrap then gives core.ErrKeyNotFound.
// Destroying a destroyed version does nothing. It refuses the current version
// (ErrCurrentVersion) and an unknown one (core.ErrKeyNotFound).
//
// The old file is replaced by rename, not overwritten in place: on most
// filesystems its blocks are freed, not erased.
func (p *Provider) DestroyVersion(v string) error {
	return p.setState(v, "destroy", true, func(fv *fileVersion) (bool, error) {
		if fv.state == StateDestroyed {
			return false, nil
		}
		fv.state = StateDestroyed
		clear(fv.key)
		fv.key = nil
		return true, nil
	})
}

func (p *Provider) setState(name, op string, refuseCurrent bool, fn func(*fileVersion) (bool, error)) error {
	return p.mutate(context.Background(), op+" version "+quote(name), func(kf *keyFile) (bool, error) {
		for i := range kf.versions {
			fv := &kf.versions[i]
			if fv.name != name {
				continue
			}
			if fv.name == kf.current && refuseCurrent {
				return false, fmt.Errorf("version %q is current; rotate first: %w", fv.name, ErrCurrentVersion)
			}
			return fn(fv)
		}
		return false, fmt.Errorf("no version %s in the key file: %w", quote(name), core.ErrKeyNotFound)
	})
}

// mutate applies fn to the key file under the lock: it takes PATH.lock,
// re-reads the file, applies fn, writes the file atomically if fn changed
// it, and then replaces the state in memory with what the file now holds. On
// error the file and the state in memory are unchanged.
func (p *Provider) mutate(ctx context.Context, op string, fn func(*keyFile) (bool, error)) error {
	fail := func(err error) error { return fmt.Errorf("%s: %s: %w", p.ref, op, err) }
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lockTimeout)
		defer cancel()
	}
	unlock, err := lockFile(ctx, p.lockFile)
	if err != nil {
		return fail(err)
	}
	defer unlock()
	kf, fi, err := p.reread()
	if err != nil {
		return fail(err)
	}
	defer kf.zero()
	changed, err := fn(kf)
	if err != nil {
		return fail(err)
	}
	if changed {
		data, err := encodeFile(kf, p.seal)
		if err != nil {
			return fail(err)
		}
		fi, err = writeAtomic(p.file, data, false)
		clear(data)
		if err != nil {
			return fail(fmt.Errorf("write key file %s: %w", p.path, err))
		}
	}
	st, err := buildState(kf, fi)
	if err != nil {
		return fail(err)
	}
	p.st.Store(st)
	return nil
}

// reread reads the key file again with the protection it was opened with.
func (p *Provider) reread() (*keyFile, os.FileInfo, error) {
	getSealer := func(k kdfParams) (*sealer, error) {
		if p.seal == nil || !p.seal.kdf.equal(k) {
			return nil, fmt.Errorf("the key file's passphrase protection changed since it was opened; open it again: %w", core.ErrPermission)
		}
		return p.seal, nil
	}
	kf, s, fi, err := readKeyFile(p.path, p.file, getSealer)
	if err != nil {
		return nil, nil, err
	}
	if p.seal != nil && s == nil {
		kf.zero()
		return nil, nil, fmt.Errorf("localfile: key file %s is no longer passphrase-protected; open it again: %w", p.path, core.ErrPermission)
	}
	if kf.keyID != p.ref.KeyID {
		kf.zero()
		return nil, nil, fmt.Errorf("localfile: key file %s now holds another key id; open it again: %w", p.path, core.ErrKeyNotFound)
	}
	return kf, fi, nil
}

// refreshIfChanged reloads the key file if it was replaced on disk since st
// was read, and reports whether the state in memory changed.
func (p *Provider) refreshIfChanged(st *state) bool {
	fi, err := os.Stat(p.file)
	if err != nil || sameFile(st.file, fi) {
		return false
	}
	// A separate mutex from mu: an unwrap must not wait while a mutation
	// waits for another process's lock. The compare-and-swap keeps a
	// mutation's newer state from being replaced by an older read.
	p.reloadMu.Lock()
	defer p.reloadMu.Unlock()
	if p.st.Load() != st {
		return true // reloaded or changed meanwhile
	}
	kf, fi, err := p.reread()
	if err != nil {
		return false
	}
	defer kf.zero()
	nst, err := buildState(kf, fi)
	if err != nil {
		return false
	}
	p.st.CompareAndSwap(st, nst)
	return true
}

func sameFile(a, b os.FileInfo) bool {
	return a != nil && b != nil && os.SameFile(a, b) && a.Size() == b.Size() && a.ModTime().Equal(b.ModTime())
}

// buildState makes the in-memory snapshot of kf: one AES-GCM instance per
// version that has a key. It does not keep the raw key bytes.
func buildState(kf *keyFile, fi os.FileInfo) (*state, error) {
	st := &state{byName: make(map[string]*kver, len(kf.versions)), file: fi}
	for _, fv := range kf.versions {
		v := &kver{name: fv.name, state: fv.state, created: fv.created, adPrefix: wrapADPrefix(kf.keyID, fv.name)}
		if fv.key != nil {
			block, err := aes.NewCipher(fv.key)
			if err != nil {
				return nil, fmt.Errorf("version %q: %w", fv.name, err)
			}
			if v.aead, err = cipher.NewGCM(block); err != nil {
				return nil, fmt.Errorf("version %q: %w", fv.name, err)
			}
		}
		st.versions = append(st.versions, v)
		st.byName[v.name] = v
	}
	st.current = st.byName[kf.current]
	if st.current == nil || st.current.aead == nil || st.current.state != StateEnabled {
		// decodeFile and every mutation keep this invariant.
		return nil, fmt.Errorf("current version %q is not an enabled version: %w", kf.current, core.ErrMalformed)
	}
	return st, nil
}

// wrapADPrefix returns the associated data of a wrap up to the encryption
// context: each field is a 4-byte big-endian length and the bytes.
//
//	len(domain) || domain || len(key id) || key id || len(version) || version
func wrapADPrefix(keyID, version string) []byte {
	b := make([]byte, 0, 12+len(wrapDomain)+len(keyID)+len(version))
	b = appendLP(b, wrapDomain)
	b = appendLP(b, keyID)
	b = appendLP(b, version)
	return b
}

// ad returns the full associated data of a wrap under v with ec:
// the prefix, then len(ec.Canonical()) || ec.Canonical().
func (v *kver) ad(ec core.Context) []byte {
	c := ec.Canonical()
	b := make([]byte, 0, len(v.adPrefix)+4+len(c))
	b = append(b, v.adPrefix...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(c)))
	return append(b, c...)
}

func appendLP(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func newKey() ([]byte, error) {
	k := make([]byte, keySize)
	if _, err := rand.Read(k); err != nil {
		return nil, fmt.Errorf("generate key: %w", err)
	}
	return k, nil
}

// validKeyID applies the rules of a core stanza key id.
func validKeyID(id string) error {
	s := core.Stanza{Provider: Type, KeyID: id, Algorithm: core.AlgAES256GCM, Data: []byte{0}}
	if err := s.Validate(); err != nil {
		return fmt.Errorf("key_id: %w", err)
	}
	return nil
}

// quote renders a caller-supplied string for an error message, bounded.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		return fmt.Sprintf("%q...", s[:max])
	}
	return fmt.Sprintf("%q", s)
}

func quoteRef(r core.KeyRef) string { return quote(r.String()) }

// osError adds the core sentinel matching an operating-system error.
func osError(err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("%w: %w", err, core.ErrKeyNotFound)
	case errors.Is(err, fs.ErrPermission):
		return fmt.Errorf("%w: %w", err, core.ErrPermission)
	case errors.Is(err, fs.ErrExist):
		return err
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("%w: %w", err, core.ErrUnavailable)
}

var (
	_ core.KeyProvider    = (*Provider)(nil)
	_ core.KeyRotator     = (*Provider)(nil)
	_ core.VaultRewrapper = (*Provider)(nil)
	_ core.HealthChecker  = (*Provider)(nil)
)
