// sensor serves random readings over HTTP.
//
//	GET /        {"value": 42, "at": "2024-01-01T00:00:00Z"}
//	GET /health  200 "ok"
//
// PORT (default 8080) sets the listening port. "sensor -healthcheck" asks the
// running server's /health and exits 0 or 1, for a HEALTHCHECK in a scratch image.
package main

import (
	"encoding/json"
	"flag"
	"log"
	"math/rand"
	"net/http"
	"os"
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
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"value": rand.Intn(100),
			"at":    time.Now().UTC().Format(time.RFC3339),
		})
	})
	log.Printf("sensor listening on :%s", port)
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
