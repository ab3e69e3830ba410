package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/keyctl/keyctl/core"
)

// maxBody bounds a request body: an e-mail address and a little JSON.
const maxBody = 4 << 10

// Handler returns the service's HTTP API:
//
//	POST /users            {"email": "..."}  -> 201 {"id": 1}
//	GET  /users/{id}                         -> 200 {"id": 1, "email": "..."}
//	POST /users/lookup     {"email": "..."}  -> 200 {"id": 1, "email": "..."}
//	GET  /users?email=...                    -> 200 {"id": 1, "email": "..."}
//
// Prefer POST /users/lookup: the address of GET /users?email= is in the
// URL, which proxies, load balancers and browsers' histories record (this
// service's own log never does). Errors are JSON {"error": "..."}: 400 for
// bad input, 404 for an unknown user, 409 for an e-mail address already
// registered, 500 for a stored value that does not decrypt or does not
// match its index (a fixed message; the cause, naming the row, goes to the
// log only), 503 when the instance must reload. Each request is logged
// with its method, route pattern, status and duration: never its URL,
// whose query string may hold an e-mail address.
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /users", s.handleCreate)
	mux.HandleFunc("GET /users/{id}", s.handleGet)
	mux.HandleFunc("POST /users/lookup", s.handleLookupPost)
	mux.HandleFunc("GET /users", s.handleLookup)
	return s.logRequests(mux)
}

// readEmail decodes a request body {"email": "..."}; on failure it has
// written the error response and returns false.
func (s *Service) readEmail(w http.ResponseWriter, r *http.Request) (string, bool) {
	var req struct {
		Email *string `json:"email"`
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			s.fail(w, r, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body over %d bytes", maxBody), nil)
			return "", false
		}
		s.fail(w, r, http.StatusBadRequest, "request body must be a JSON object {\"email\": \"...\"}", nil)
		return "", false
	}
	if _, err := dec.Token(); err != io.EOF {
		s.fail(w, r, http.StatusBadRequest, "request body must hold one JSON object only", nil)
		return "", false
	}
	if req.Email == nil {
		s.fail(w, r, http.StatusBadRequest, "missing field \"email\"", nil)
		return "", false
	}
	return *req.Email, true
}

func (s *Service) handleCreate(w http.ResponseWriter, r *http.Request) {
	email, ok := s.readEmail(w, r)
	if !ok {
		return
	}
	id, err := s.Create(r.Context(), email)
	switch {
	case err == nil:
		w.Header().Set("Location", "/users/"+strconv.FormatInt(id, 10))
		writeJSON(w, http.StatusCreated, map[string]int64{"id": id})
	case errors.Is(err, ErrBadEmail):
		s.fail(w, r, http.StatusBadRequest, err.Error(), nil)
	case errors.Is(err, ErrDuplicate):
		s.fail(w, r, http.StatusConflict, err.Error(), nil)
	case errors.Is(err, ErrReloadNeeded):
		s.fail(w, r, http.StatusServiceUnavailable, "blind-index configuration changed; this instance must reload", err)
	default:
		s.fail(w, r, http.StatusInternalServerError, "could not store the user", err)
	}
}

func (s *Service) handleGet(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		s.fail(w, r, http.StatusBadRequest, "user id must be a positive decimal integer", nil)
		return
	}
	u, err := s.Get(r.Context(), id)
	s.reply(w, r, u, err)
}

func (s *Service) handleLookup(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	emails, ok := q["email"]
	if !ok || len(emails) != 1 || len(q) != 1 {
		s.fail(w, r, http.StatusBadRequest, "give exactly one query parameter: email", nil)
		return
	}
	u, err := s.Lookup(r.Context(), emails[0])
	s.reply(w, r, u, err)
}

func (s *Service) handleLookupPost(w http.ResponseWriter, r *http.Request) {
	email, ok := s.readEmail(w, r)
	if !ok {
		return
	}
	u, err := s.Lookup(r.Context(), email)
	s.reply(w, r, u, err)
}

// reply writes the outcome of Get or Lookup.
func (s *Service) reply(w http.ResponseWriter, r *http.Request, u User, err error) {
	switch {
	case err == nil:
		writeJSON(w, http.StatusOK, u)
	case errors.Is(err, ErrBadEmail):
		s.fail(w, r, http.StatusBadRequest, err.Error(), nil)
	case errors.Is(err, ErrNotFound):
		s.fail(w, r, http.StatusNotFound, err.Error(), nil)
	case errors.Is(err, ErrIndexMismatch):
		// An altered index column: the row found is not the one asked for.
		s.fail(w, r, http.StatusInternalServerError, ErrIndexMismatch.Error(), err)
	case core.IsInputError(err):
		// A value that does not decrypt (moved from another row, altered,
		// or under a DEK this instance has not loaded). The client gets a
		// fixed message; the log gets the cause, which names the row and
		// the DEK id, never the content.
		s.fail(w, r, http.StatusInternalServerError, "the stored e-mail cannot be read: it cannot decrypt with this instance's keys", err)
	default:
		s.fail(w, r, http.StatusInternalServerError, "internal error", err)
	}
}

// fail writes an error response; cause, if not nil, is logged. Messages
// and causes never contain an e-mail address: the errors of this package
// and of core name rows and key ids only.
func (s *Service) fail(w http.ResponseWriter, r *http.Request, status int, msg string, cause error) {
	if cause != nil {
		s.log.Error("request failed", "method", r.Method, "route", r.Pattern, "status", status, "err", cause)
	}
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// logRequests logs one line per request: method, route pattern (as the mux
// matched it, so /users/{id} and not the id; /users and not its query),
// status and duration.
func (s *Service) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r)
		route := r.Pattern // set by the mux on r
		if route == "" {
			route = "(no route)"
		}
		s.log.LogAttrs(r.Context(), slog.LevelInfo, "request",
			slog.String("method", r.Method), slog.String("route", route),
			slog.Int("status", sw.status), slog.Duration("took", time.Since(start)))
	})
}
