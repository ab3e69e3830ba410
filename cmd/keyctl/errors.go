package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"

	"github.com/keyctl/keyctl/config"
	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

// Exit codes.
const (
	exitOK      = 0
	exitFailure = 1 // provider or environment failure
	exitUsage   = 2 // usage, bad input, bad configuration
)

// usageError reports a mistake in how keyctl was called: a missing or
// conflicting flag, a file that would be overwritten, a passphrase that
// cannot be obtained. It maps to exit code 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

// usagef returns a usageError.
func usagef(format string, args ...any) error {
	return &usageError{msg: fmt.Sprintf(format, args...)}
}

// hinted carries a hint for the user alongside an error. The hint is
// printed after the message, as "; hint: ...".
type hinted struct {
	err  error
	hint string
}

func (h *hinted) Error() string { return h.err.Error() }
func (h *hinted) Unwrap() error { return h.err }

// withHint attaches hint to err (nil stays nil).
func withHint(err error, hint string) error {
	if err == nil {
		return nil
	}
	return &hinted{err: err, hint: hint}
}

// commandError marks an error returned by a command's own code, as opposed
// to one cobra produced while parsing the command line (which is always a
// usage error).
type commandError struct{ err error }

func (e *commandError) Error() string { return e.err.Error() }
func (e *commandError) Unwrap() error { return e.err }

// exitStatus is returned by a command that has already reported its
// failures itself (rewrap): run prints nothing more and exits with code.
type exitStatus struct {
	code int
	msg  string
}

func (e *exitStatus) Error() string { return e.msg }

// exitCode maps an error to the process exit status. It is the one place
// where that mapping is made:
//
//   - 0: no error;
//   - 2: usage errors, errors from cobra's command-line parsing, invalid or
//     missing configuration, input errors of core (core.IsInputError),
//     permission errors (core.ErrPermission: unsafe key-file mode, wrong
//     passphrase), files that exist where keyctl refuses to overwrite, and
//     refused operations on the current KEK version;
//   - 1: everything else, notably a provider that cannot be reached
//     (core.ErrUnavailable wins over any input error joined with it,
//     because retrying may help).
func exitCode(err error) int {
	if err == nil {
		return exitOK
	}
	var st *exitStatus
	if errors.As(err, &st) {
		return st.code
	}
	var ce *commandError
	if !errors.As(err, &ce) {
		// Produced by cobra before any command ran: unknown command or
		// flag, wrong number of arguments, missing required flag.
		return exitUsage
	}
	var ue *usageError
	switch {
	case errors.Is(err, core.ErrUnavailable),
		errors.Is(err, context.Canceled),
		errors.Is(err, context.DeadlineExceeded):
		return exitFailure
	case errors.As(err, &ue),
		errors.Is(err, config.ErrInvalid),
		errors.Is(err, config.ErrNotFound),
		core.IsInputError(err),
		errors.Is(err, core.ErrPermission),
		errors.Is(err, fs.ErrExist):
		return exitUsage
	}
	return exitFailure
}

// hintFor returns the hint to print with err: the innermost explicit hint,
// else a generic one for well-known errors, else "".
func hintFor(err error) string {
	var h *hinted
	if errors.As(err, &h) {
		return h.hint
	}
	var ce *commandError
	if !errors.As(err, &ce) {
		return "see 'keyctl --help' or 'keyctl COMMAND --help'"
	}
	switch {
	case errors.Is(err, config.ErrNotFound):
		return "run `keyctl init` to create keyctl.hcl, or pass --config FILE or set KEYCTL_CONFIG"
	case errors.Is(err, core.ErrNoProvider):
		return "the wrapped key names a KEK that keyctl.hcl does not configure; add a provider block for it and list it in keyring.decrypt_only"
	case errors.Is(err, core.ErrUnwrapFailed):
		return "the record was altered, or --context differs from the one given when it was wrapped"
	case errors.Is(err, core.ErrDecryptFailed):
		return "the value was altered, or --ad differs from the one given when it was encrypted"
	case errors.Is(err, core.ErrKeyDisabled):
		return "enable the KEK version again with `keyctl kek enable VERSION`"
	case errors.Is(err, localfile.ErrCurrentVersion):
		return "run `keyctl rotate` first so that another version becomes current"
	}
	return ""
}

// oneLine flattens msg onto a single line: line breaks become "; " and other
// control characters become '?'.
func oneLine(msg string) string {
	msg = strings.ReplaceAll(msg, "\r\n", "\n")
	lines := strings.Split(msg, "\n")
	kept := lines[:0]
	for _, l := range lines {
		if l = strings.TrimSpace(l); l != "" {
			kept = append(kept, l)
		}
	}
	msg = strings.Join(kept, "; ")
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return '?'
		}
		return r
	}, strings.ToValidUTF8(msg, "?"))
}

// errorLine renders err as the one line keyctl prints on stderr.
func errorLine(err error) string {
	line := "keyctl: error: " + oneLine(err.Error())
	if h := hintFor(err); h != "" {
		line += "; hint: " + oneLine(h)
	}
	return line
}

// errorJSON is the object printed on stdout for a failed command with --json.
type errorJSON struct {
	Error struct {
		Message     string        `json:"message"`
		Hint        string        `json:"hint,omitempty"`
		ExitCode    int           `json:"exit_code"`
		Diagnostics []config.Diag `json:"diagnostics,omitempty"`
	} `json:"error"`
}

func newErrorJSON(err error) errorJSON {
	var e errorJSON
	e.Error.Message = oneLine(err.Error())
	e.Error.Hint = oneLine(hintFor(err))
	e.Error.ExitCode = exitCode(err)
	var ce *config.Error
	if errors.As(err, &ce) {
		e.Error.Diagnostics = ce.Diags()
	}
	return e
}
