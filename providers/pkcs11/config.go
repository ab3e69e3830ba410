package pkcs11

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"unicode/utf8"

	"github.com/keyctl/keyctl/core"
)

// Type is the provider type written in the stanzas of this provider.
const Type = "pkcs11"

// Mechanism names accepted in [Config.Mechanism].
const (
	// MechanismGCM wraps with CKM_AES_GCM through C_Encrypt / C_Decrypt:
	// a fresh random 12-byte IV made by the provider, a 128-bit tag, the key
	// id, key version and encryption context bound as associated data
	// (core.AlgAES256GCM). The default.
	MechanismGCM = "aes-gcm"
	// MechanismKWP wraps with CKM_AES_KEY_WRAP_PAD (RFC 5649) through
	// C_WrapKey / C_UnwrapKey (core.AlgAES256KWP).
	MechanismKWP = "aes-key-wrap-pad"
)

// DefaultSessions is the size of the session pool when Config.Sessions is 0.
const DefaultSessions = 4

// MaxSessions bounds Config.Sessions.
const MaxSessions = 256

// Config configures [New]. Exactly one of TokenLabel, TokenSerial and Slot
// selects the token.
type Config struct {
	// Module is the path of the PKCS#11 module (shared library), such as
	// Debian's /usr/lib/softhsm/libsofthsm2.so. Required.
	Module string
	// TokenLabel selects the token by its label (CKA_LABEL of the token,
	// trailing blanks ignored). Preferred: SoftHSM2 reassigns slot ids when
	// a token is initialised, labels stay.
	TokenLabel string
	// TokenSerial selects the token by its serial number.
	TokenSerial string
	// Slot selects the token by slot id.
	Slot *uint
	// PIN is the user PIN. The caller resolves it from an environment
	// variable or a PIN file, never from literal configuration. Required by
	// New (Validate does not check it, so that a configuration can be checked
	// without its secrets). New copies it; the caller may zero its slice.
	PIN []byte
	// KeyLabel is the CKA_LABEL of the KEK's key objects. Every version of
	// the KEK is a separate AES-256 secret key with this label and its own
	// CKA_ID. Required.
	KeyLabel string
	// Mechanism is MechanismGCM ("aes-gcm", the default when empty) or
	// MechanismKWP ("aes-key-wrap-pad"). It chooses how new DEKs are
	// wrapped; unwrap follows the algorithm recorded in each stanza.
	Mechanism string
	// Sessions is the number of logged-in sessions kept open, that is the
	// number of operations that may run on the token at once. 0 means
	// DefaultSessions; at most MaxSessions.
	Sessions int
}

// maxLabel is the length of a PKCS#11 token label field.
const maxLabel = 32

// Validate checks the configuration without loading the module. Errors wrap
// core.ErrMalformed. It does not check PIN (see [Config.PIN]).
func (c Config) Validate() error {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("pkcs11: config: "+format+": %w", append(a, core.ErrMalformed)...)
	}
	if c.Module == "" {
		return bad("module (the path of the PKCS#11 library) is required")
	}
	n := 0
	if c.TokenLabel != "" {
		n++
	}
	if c.TokenSerial != "" {
		n++
	}
	if c.Slot != nil {
		n++
	}
	switch {
	case n == 0:
		return bad("one of token label, token serial or slot is required")
	case n > 1:
		return bad("give exactly one of token label, token serial or slot, not %d", n)
	}
	if c.TokenLabel != "" && (len(c.TokenLabel) > maxLabel || !printable(c.TokenLabel) || strings.TrimRight(c.TokenLabel, " ") != c.TokenLabel) {
		return bad("token label %q: want 1 to %d printable bytes without trailing blanks", c.TokenLabel, maxLabel)
	}
	if c.TokenSerial != "" && (len(c.TokenSerial) > 16 || !printable(c.TokenSerial)) {
		return bad("token serial %q: want 1 to 16 printable bytes", c.TokenSerial)
	}
	if c.KeyLabel == "" {
		return bad("key label (CKA_LABEL of the KEK) is required")
	}
	if len(c.KeyLabel) > 256 || !printable(c.KeyLabel) {
		return bad("key label %q: want 1 to 256 bytes of printable UTF-8", c.KeyLabel)
	}
	switch c.Mechanism {
	case "", MechanismGCM, MechanismKWP:
	default:
		return bad("mechanism %q: want %q or %q", c.Mechanism, MechanismGCM, MechanismKWP)
	}
	if c.Sessions < 0 || c.Sessions > MaxSessions {
		return bad("sessions %d: want 0 (default %d) to %d", c.Sessions, DefaultSessions, MaxSessions)
	}
	return nil
}

// tokenDesc names the token the configuration selects, for messages.
func (c Config) tokenDesc() string {
	switch {
	case c.TokenLabel != "":
		return fmt.Sprintf("token %q", c.TokenLabel)
	case c.TokenSerial != "":
		return fmt.Sprintf("token with serial %q", c.TokenSerial)
	case c.Slot != nil:
		return fmt.Sprintf("token in slot %d", *c.Slot)
	}
	return "token"
}

func printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return false
		}
	}
	return true
}

// MaxPINLen bounds a PIN read by ReadPINFile.
const MaxPINLen = 256

// ReadPINFile reads a user PIN from a file, for callers that take the PIN
// from a file rather than the environment. The file must not be readable or
// writable by group or others (mode 0600 or stricter; core.ErrPermission
// otherwise, naming the fix). One trailing newline ("\n" or "\r\n") is
// removed; an empty PIN, a PIN over MaxPINLen bytes or one with control
// characters is refused with core.ErrMalformed. Errors never contain the
// file's content. The caller owns the returned slice and should zero it once
// New has returned.
func ReadPINFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("pkcs11: PIN file %s: %v: %w", path, err, core.ErrPermission)
		}
		return nil, fmt.Errorf("pkcs11: PIN file %s: %v: %w", path, err, core.ErrMalformed)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("pkcs11: PIN file %s: %v: %w", path, err, core.ErrUnavailable)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("pkcs11: PIN file %s: not a regular file: %w", path, core.ErrMalformed)
	}
	if runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("pkcs11: PIN file %s: mode %04o lets other users read or change it; run chmod 600 %s: %w", path, fi.Mode().Perm(), path, core.ErrPermission)
	}
	buf := make([]byte, MaxPINLen+3)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		clear(buf)
		return nil, fmt.Errorf("pkcs11: PIN file %s: %v: %w", path, err, core.ErrUnavailable)
	}
	pin := buf[:n]
	if bytes.HasSuffix(pin, []byte("\r\n")) {
		pin = pin[:len(pin)-2]
	} else if bytes.HasSuffix(pin, []byte("\n")) {
		pin = pin[:len(pin)-1]
	}
	out := bytes.Clone(pin)
	clear(buf)
	switch {
	case len(out) == 0:
		return nil, fmt.Errorf("pkcs11: PIN file %s is empty: %w", path, core.ErrMalformed)
	case len(out) > MaxPINLen || n == len(buf):
		clear(out)
		return nil, fmt.Errorf("pkcs11: PIN file %s: PIN longer than %d bytes: %w", path, MaxPINLen, core.ErrMalformed)
	case !printable(string(out)):
		clear(out)
		return nil, fmt.Errorf("pkcs11: PIN file %s: the PIN holds control characters or invalid UTF-8 (only one trailing newline is removed): %w", path, core.ErrMalformed)
	}
	return out, nil
}

// String renders c for messages and logs with the PIN redacted; %v, %+v and
// %#v all use it.
func (c Config) String() string {
	slot := "nil"
	if c.Slot != nil {
		slot = fmt.Sprint(*c.Slot)
	}
	pin := "none"
	if len(c.PIN) > 0 {
		pin = "REDACTED"
	}
	return fmt.Sprintf("pkcs11.Config{Module:%q TokenLabel:%q TokenSerial:%q Slot:%s PIN:%s KeyLabel:%q Mechanism:%q Sessions:%d}",
		c.Module, c.TokenLabel, c.TokenSerial, slot, pin, c.KeyLabel, c.Mechanism, c.Sessions)
}

// GoString implements fmt.GoStringer like String.
func (c Config) GoString() string { return c.String() }
