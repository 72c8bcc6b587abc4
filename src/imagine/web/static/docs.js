// Builds the API reference into #swagger-ui with the vendored Swagger UI. It is
// a file, not an inline script, so the page's policy can stay `script-src 'self'`;
// the page says where the OpenAPI document is in `data-openapi-url`.
"use strict";

(() => {
  const node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.dataset.openapiUrl,
    domNode: node,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    deepLinking: true,
    showExtensions: true,
    showCommonExtensions: true,
    // Never ask the public validator (another origin) about this document.
    validatorUrl: null,
  });
})();
