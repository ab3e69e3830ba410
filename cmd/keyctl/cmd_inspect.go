package main

import (
	"bytes"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	"github.com/keyctl/keyctl/core"
)

type inspectResult struct {
	Kind string `json:"kind"` // "wrapped-key" or "field-ciphertext"
	Form string `json:"form"` // "text" or "binary"

	// Wrapped key.
	Format int        `json:"format,omitempty"`
	Wraps  []wrapInfo `json:"wraps,omitempty"`

	// Field ciphertext.
	Version         int    `json:"version,omitempty"`
	DEKID           string `json:"dek_id,omitempty"`
	Length          int    `json:"length,omitempty"`
	PlaintextLength *int   `json:"plaintext_length,omitempty"`
}

func (a *app) inspectCommand() *cobra.Command {
	var value string
	var valueSet bool
	c := &cobra.Command{
		Use:   "inspect [FILE|-] [--value STRING]",
		Short: "Show what a wrapped key or field ciphertext holds, without touching any key",
		Long: `Read a wrapped key or a field ciphertext, in text or binary form, from FILE,
stdin or --value, and show its unencrypted metadata. No configuration is read
and no key is used.

A wrapped key shows, for each wrap: provider type, key id, KEK version,
algorithm and size of the wrapped bytes. A field ciphertext shows its format
version, the id of the DEK that encrypted it (8 hex digits) and its length.`,
		Example: `  keyctl inspect app.wk
  keyctl inspect --value "$(psql -Atc 'select email from users limit 1')"`,
		Args: cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			valueSet = cmd.Flags().Changed("value")
			var b []byte
			name := "--value"
			if valueSet {
				if len(args) > 0 {
					return usagef("inspect: give FILE or --value, not both")
				}
				b = []byte(value)
			} else {
				var err error
				b, name, err = a.readInput(argOr(args, ""), core.MaxFieldText+64, func(n int) error {
					return fmt.Errorf("over %d bytes, larger than any wrapped key or field ciphertext: %w", n, core.ErrMalformed)
				})
				if err != nil {
					return err
				}
			}
			res, err := inspect(b)
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			if a.jsonOut {
				a.emitJSON(res)
				return nil
			}
			a.printInspect(res)
			return nil
		}),
	}
	c.Flags().StringVar(&value, "value", "", "inspect this string instead of FILE or stdin")
	return c
}

// inspect identifies and parses b.
func inspect(b []byte) (*inspectResult, error) {
	t := bytes.TrimSpace(b)
	switch {
	case core.IsBinaryWrappedKey(b):
		wk, err := core.ParseWrappedKey(b)
		if err != nil {
			return nil, err
		}
		return &inspectResult{Kind: "wrapped-key", Form: "binary", Format: core.WrappedKeyFormatV1, Wraps: wrapInfos(wk)}, nil
	case bytes.HasPrefix(t, []byte("keyctl-wk")) || (len(t) > 0 && strings.HasPrefix(core.WrappedKeyTextPrefix, string(t))):
		wk, err := core.ParseWrappedKey(b)
		if err != nil {
			return nil, err
		}
		return &inspectResult{Kind: "wrapped-key", Form: "text", Format: core.WrappedKeyFormatV1, Wraps: wrapInfos(wk)}, nil
	case len(b) > 0 && b[0] == core.FieldFormatV1:
		h, err := core.ParseFieldHeader(b)
		if err != nil {
			return nil, err
		}
		return fieldResult(h, "binary"), nil
	case len(t) == 0:
		return nil, fmt.Errorf("empty input: %w", core.ErrMalformed)
	}
	ct, err := core.DecodeFieldText(string(t))
	if err != nil {
		return nil, fmt.Errorf("neither a wrapped key (%s...) nor a field ciphertext: %w", core.WrappedKeyTextPrefix, err)
	}
	h, err := core.ParseFieldHeader(ct)
	if err != nil {
		if errors.Is(err, core.ErrUnsupportedVersion) && len(ct) > 0 {
			return nil, fmt.Errorf("not a wrapped key, and not a field ciphertext this build reads: %w", err)
		}
		return nil, err
	}
	return fieldResult(h, "text"), nil
}

func fieldResult(h core.FieldHeader, form string) *inspectResult {
	pl := h.CiphertextLen - (core.FieldOverhead - core.FieldHeaderLen)
	return &inspectResult{
		Kind:            "field-ciphertext",
		Form:            form,
		Version:         int(h.Version),
		DEKID:           fmt.Sprintf("%08x", h.DEKID),
		Length:          core.FieldHeaderLen + h.CiphertextLen,
		PlaintextLength: &pl,
	}
}

func (a *app) printInspect(r *inspectResult) {
	if r.Kind == "wrapped-key" {
		a.printf("wrapped key, %s form, format %d, %d wrap(s)\n", r.Form, r.Format, len(r.Wraps))
		for i, w := range r.Wraps {
			a.printf("wrap %d:\n", i)
			a.printf("  provider:    %s\n", w.Provider)
			a.printf("  key id:      %s\n", oneLine(w.KeyID))
			a.printf("  key version: %s\n", oneLine(w.KeyVersion))
			a.printf("  algorithm:   %s\n", w.Algorithm)
			a.printf("  size:        %d bytes\n", w.Size)
		}
		return
	}
	a.printf("field ciphertext, %s form\n", r.Form)
	a.printf("  version:   %d\n", r.Version)
	a.printf("  DEK id:    %s\n", r.DEKID)
	a.printf("  length:    %d bytes (binary), plaintext %d bytes\n", r.Length, *r.PlaintextLength)
}
