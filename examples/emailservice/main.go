// Command emailservice is an example HTTP service that stores users' e-mail
// addresses encrypted with keyctl's core embedded, in the pattern keyctl
// exists for: the data keys (DEKs) are unwrapped once at start by the vault
// (here a local key file), kept in memory, and every request encrypts and
// decrypts without calling the vault. Users are found by e-mail through a
// blind index: an HMAC-SHA256 of the normalised address under a key of its
// own keyset. See docs/example-service.md and docs/blind-index.md.
//
// First run (creates the key file, both keysets and the table):
//
//	go run ./examples/emailservice -init -db users.db -kek kek.json
//
// Then:
//
//	curl -s -XPOST localhost:8080/users -d '{"email":"alice@example.com"}'
//	curl -s localhost:8080/users/1
//	curl -s -XPOST localhost:8080/users/lookup -d '{"email":"Alice@Example.com"}'
//	curl -s 'localhost:8080/users?email=Alice@Example.com'   # the same; the address lands in proxy logs
//
// Rotating the blind-index key, one step at a time (reload every running
// instance with SIGHUP between steps):
//
//	emailservice -db users.db -kek kek.json -rotate-index begin
//	emailservice -db users.db -kek kek.json -rotate-index backfill
//	emailservice -db users.db -kek kek.json -rotate-index switch
//	emailservice -db users.db -kek kek.json -rotate-index finish
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keyctl/keyctl/core"
	"github.com/keyctl/keyctl/providers/localfile"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stderr))
}

// Exit codes.
const (
	exitEnv   = 1 // the environment failed: database, vault, network
	exitUsage = 2 // bad flags or input
)

// options are the command-line flags.
type options struct {
	listen           string
	allowNonLoopback bool
	db               string
	kek              string
	kekID            string
	emailKeyset      string
	indexKeyset      string
	init             bool
	rotateIndex      string
	batch            int
}

func parseFlags(args []string, stderr io.Writer) (*options, error) {
	o := &options{}
	set := flag.NewFlagSet("emailservice", flag.ContinueOnError)
	set.SetOutput(stderr)
	set.StringVar(&o.listen, "listen", "127.0.0.1:8080", "address to listen on; must be loopback unless -allow-non-loopback")
	set.BoolVar(&o.allowNonLoopback, "allow-non-loopback", false, "allow -listen on a non-loopback address (put TLS and authentication in front first)")
	set.StringVar(&o.db, "db", "emailservice.db", "SQLite database: the users table and both keysets")
	set.StringVar(&o.kek, "kek", "emailservice-kek.json", "local key file holding the KEK (keyctl localfile format)")
	set.StringVar(&o.kekID, "kek-id", "emailservice", "key id of the KEK that -init creates")
	set.StringVar(&o.emailKeyset, "email-keyset", DefaultEmailKeyset, "keyset name of the e-mail DEKs")
	set.StringVar(&o.indexKeyset, "index-keyset", DefaultIndexKeyset, "keyset name of the blind-index keys")
	set.BoolVar(&o.init, "init", false, "create the key file (if missing), the keysets and the table (if missing), then serve")
	set.StringVar(&o.rotateIndex, "rotate-index", "", "run one blind-index rotation step and exit: begin, backfill, switch, finish, or all")
	set.IntVar(&o.batch, "batch", 500, "rows per transaction of the backfill")
	if err := set.Parse(args); err != nil {
		return nil, err
	}
	if set.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", set.Arg(0))
	}
	switch o.rotateIndex {
	case "", "begin", "backfill", "switch", "finish", "all":
	default:
		return nil, fmt.Errorf("-rotate-index %q: want begin, backfill, switch, finish or all", o.rotateIndex)
	}
	if o.batch <= 0 {
		return nil, fmt.Errorf("-batch %d: must be positive", o.batch)
	}
	if o.rotateIndex == "" && !o.allowNonLoopback {
		if err := checkLoopback(o.listen); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// checkLoopback refuses a listen address that is not a loopback IP or
// "localhost": an empty host (every interface), another IP, or a host name
// that could resolve anywhere.
func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("-listen %q: %w", addr, err)
	}
	if strings.EqualFold(host, "localhost") {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("-listen %q is not a loopback address; this example has no TLS or authentication: pass -allow-non-loopback to bind it anyway", addr)
}

func run(ctx context.Context, args []string, stderr io.Writer) int {
	log := slog.New(slog.NewTextHandler(stderr, nil))
	o, err := parseFlags(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		fmt.Fprintln(stderr, "emailservice:", err)
		return exitUsage
	}
	kek, err := openKEK(o)
	if err != nil {
		log.Error("key file", "err", err)
		return exitCode(err)
	}
	ring, err := core.NewKeyring(kek)
	if err != nil {
		log.Error("keyring", "err", err)
		return exitEnv
	}
	cfg := Config{DBPath: o.db, Ring: ring, EmailKeyset: o.emailKeyset, IndexKeyset: o.indexKeyset, Logger: log}
	if o.init {
		if err := Init(ctx, cfg); err != nil {
			log.Error("init", "err", err)
			return exitCode(err)
		}
	}
	svc, err := Open(ctx, cfg)
	if err != nil {
		log.Error("start", "err", err)
		return exitCode(err)
	}
	defer svc.Close()
	if o.rotateIndex != "" {
		if err := rotateStep(ctx, svc, o.rotateIndex, o.batch, log); err != nil {
			log.Error("rotate-index "+o.rotateIndex, "err", err)
			return exitCode(err)
		}
		return 0
	}
	if err := serve(ctx, svc, o.listen, log); err != nil {
		log.Error("serve", "err", err)
		return exitEnv
	}
	return 0
}

// openKEK opens the key file; with -init it creates it first if missing.
func openKEK(o *options) (*localfile.Provider, error) {
	if o.init {
		if _, err := os.Stat(o.kek); errors.Is(err, fs.ErrNotExist) {
			return localfile.Create(o.kek, localfile.CreateOptions{KeyID: o.kekID})
		}
	}
	p, err := localfile.Open(o.kek, localfile.Options{})
	if err != nil && errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w (run once with -init to create it)", err)
	}
	return p, err
}

func exitCode(err error) int {
	if core.IsInputError(err) || errors.Is(err, ErrRotationState) || errors.Is(err, ErrIndexIncomplete) {
		return exitUsage
	}
	return exitEnv
}

func rotateStep(ctx context.Context, svc *Service, step string, batch int, log *slog.Logger) error {
	switch step {
	case "begin":
		col, err := svc.BeginIndexRotation(ctx)
		if err == nil {
			log.Info("new blind-index column added; reload every instance (SIGHUP), then run -rotate-index backfill", "column", col)
		}
		return err
	case "backfill":
		st, err := svc.BackfillIndex(ctx, batch)
		if err == nil {
			log.Info("backfill done; run -rotate-index switch", "filled", st.Filled, "skipped", st.Skipped)
		}
		return err
	case "switch":
		err := svc.SwitchIndex(ctx)
		if err == nil {
			log.Info("lookups now use the new column; reload every instance (SIGHUP), then run -rotate-index finish")
		}
		return err
	case "finish":
		err := svc.FinishIndexRotation(ctx)
		if err == nil {
			log.Info("old blind-index column dropped and its key retired; reload every instance (SIGHUP)")
		}
		return err
	default: // "all"
		col, err := RotateBlindIndex(ctx, svc, batch)
		if err == nil {
			log.Info("blind-index key rotated (only safe with no other instance running)", "column", col)
		}
		return err
	}
}

// newServer returns the HTTP server with timeouts on every phase of a
// request, so a slow client cannot hold connections open.
func newServer(h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      15 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// serve runs the HTTP server until ctx is done, then shuts it down
// gracefully. SIGHUP reloads the keys and the blind-index configuration.
func serve(ctx context.Context, svc *Service, addr string, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	srv := newServer(svc.Handler(), log)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				if err := svc.Reload(ctx); err != nil {
					log.Error("reload failed; keeping the keys loaded before", "err", err)
				}
			}
		}
	}()
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	log.Info("listening", "addr", ln.Addr().String())
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}
