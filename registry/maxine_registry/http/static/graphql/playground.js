// The GraphQL playground: POST the query and variables to this same URL and show the answer as it came.
"use strict";

(function () {
  async function run() {
    const result = document.getElementById("result");
    let variables = {};
    const text = document.getElementById("variables").value.trim();
    if (text) {
      try {
        variables = JSON.parse(text);
      } catch (error) {
        result.textContent = "The variables are not valid JSON: " + error.message;
        return;
      }
    }
    result.textContent = "Running...";
    try {
      const response = await fetch(window.location.pathname, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ query: document.getElementById("query").value, variables: variables }),
      });
      const body = await response.json();
      result.textContent = "HTTP " + response.status + "\n" + JSON.stringify(body, null, 2);
    } catch (error) {
      result.textContent = "The request failed: " + error.message;
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("run").addEventListener("click", run);
    document.addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        run();
      }
    });
  });
})();
