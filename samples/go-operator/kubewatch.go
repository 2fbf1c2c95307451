package main

import (
	"bufio"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"time"

	"example.com/sample-operator/controllers"
)

// watchEvent is the part of a Kubernetes watch event the sample needs.
type watchEvent struct {
	Type   string `json:"type"`
	Object struct {
		Metadata struct {
			Namespace string `json:"namespace"`
			Name      string `json:"name"`
		} `json:"metadata"`
	} `json:"object"`
}

// watchProducer makes the sample a real operator for the Kubernetes tests: it
// watches url (an API list path with ?watch=1) with a bearer token and queues
// one reconcile per ADDED, MODIFIED or DELETED event, as controller-runtime's
// informers do (cause "change"). Standard library only; the test cluster's
// certificate is self-signed, so TLS is not verified.
func watchProducer(q *workQueue, url, tokenFile string) {
	token, err := os.ReadFile(tokenFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sample-operator:", err)
		os.Exit(1)
	}
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	for {
		req, _ := http.NewRequest("GET", url, nil)
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
		resp, err := client.Do(req)
		if err != nil {
			fmt.Fprintln(os.Stderr, "sample-operator: watch:", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		if resp.StatusCode != http.StatusOK {
			fmt.Fprintln(os.Stderr, "sample-operator: watch:", resp.Status)
			resp.Body.Close()
			time.Sleep(200 * time.Millisecond)
			continue
		}
		fmt.Fprintln(os.Stderr, "watching", url)
		scanner := bufio.NewScanner(resp.Body)
		scanner.Buffer(make([]byte, 1<<20), 1<<24)
		for scanner.Scan() {
			var ev watchEvent
			if json.Unmarshal(scanner.Bytes(), &ev) != nil {
				continue
			}
			switch ev.Type {
			case "ADDED", "MODIFIED", "DELETED":
				q.Add(item{controllers.Request{NamespacedName: controllers.NamespacedName{
					Namespace: ev.Object.Metadata.Namespace, Name: ev.Object.Metadata.Name,
				}}, "change"})
			}
		}
		resp.Body.Close()
	}
}
