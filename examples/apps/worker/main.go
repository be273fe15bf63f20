// worker squares a number over HTTP.
//
//	GET /square?n=7  {"n": 7, "square": 49}
//	GET /health      200 "ok"
//
// PORT (default 8080) sets the listening port. "worker -healthcheck" asks the
// running server's /health and exits 0 or 1, for a HEALTHCHECK in a scratch image.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	check := flag.Bool("healthcheck", false, "query /health of the running server and exit")
	flag.Parse()
	port := getenv("PORT", "8080")
	if *check {
		os.Exit(healthcheck(port))
	}

	mux := http.NewServeMux()
	mux.HandleFunc("/health", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/square", func(w http.ResponseWriter, r *http.Request) {
		n, err := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		if err != nil {
			http.Error(w, "n must be an integer", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]int64{"n": n, "square": n * n})
	})
	log.Printf("worker listening on :%s", port)
	log.Fatal(http.ListenAndServe(":"+port, mux))
}

func healthcheck(port string) int {
	c := http.Client{Timeout: 2 * time.Second}
	resp, err := c.Get("http://127.0.0.1:" + port + "/health")
	if err != nil {
		return 1
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 1
	}
	return 0
}

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}
